/* gl-offscreen: draw one triangle into an offscreen framebuffer with GLES2
 * and check every pixel that is clearly inside or clearly outside it.
 *
 * usage: gl-offscreen [--expect-renderer SUBSTRING]
 *
 * EGL runs on the surfaceless platform (no window system, no display). The
 * framebuffer is 160x120 RGBA8, cleared to (51, 102, 153, 255); the triangle
 * has the corners below (normalized device coordinates) and is filled with
 * (255, 204, 0, 255). Pixels within 1.5 pixels of an edge are not checked
 * (rasterization rules may differ there); the others must match within 1 per
 * channel. --expect-renderer fails the test unless GL_RENDERER contains the
 * given text, e.g. "virgl" or "llvmpipe".
 */
#include <math.h>
#include <string.h>

#include "common.h"
#include "gl-util.h"

const char *const test_name = "gl-offscreen";

#define WIDTH 160
#define HEIGHT 120
#define EDGE_MARGIN 1.5

static const GLfloat corners[3][2] = { { -0.75f, -0.75f }, { 0.75f, -0.5f }, { -0.25f, 0.75f } };
static const unsigned char clear_colour[4] = { 51, 102, 153, 255 };
static const unsigned char triangle_colour[4] = { 255, 204, 0, 255 };

static const char vertex_source[] =
    "attribute vec2 position;\n"
    "void main() { gl_Position = vec4(position, 0.0, 1.0); }\n";
static const char fragment_source[] =
    "precision mediump float;\n"
    "uniform vec4 colour;\n"
    "void main() { gl_FragColor = colour; }\n";

/* Signed distance, in pixels, from the pixel centre (px, py) to the edge from
 * corner a to corner b; positive on the inside of the counter-clockwise
 * triangle. Both are in window coordinates (y up, as glReadPixels returns). */
static double edge_distance(int a, int b, double px, double py)
{
    double ax = (corners[a][0] + 1.0) * WIDTH / 2, ay = (corners[a][1] + 1.0) * HEIGHT / 2;
    double bx = (corners[b][0] + 1.0) * WIDTH / 2, by = (corners[b][1] + 1.0) * HEIGHT / 2;
    double cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax);

    return cross / hypot(bx - ax, by - ay);
}

/* The expected colour of pixel (x, y), or NULL when it is too close to an
 * edge to be checked. */
static const unsigned char *expected_colour(int x, int y)
{
    double nearest = INFINITY;

    for (int e = 0; e < 3; e++) {
        double d = edge_distance(e, (e + 1) % 3, x + 0.5, y + 0.5);

        if (d < nearest)
            nearest = d;
    }
    if (nearest > EDGE_MARGIN)
        return triangle_colour;
    if (nearest < -EDGE_MARGIN)
        return clear_colour;
    return NULL;
}

static int close_enough(const unsigned char *got, const unsigned char *want)
{
    for (int c = 0; c < 4; c++) {
        if (abs(got[c] - want[c]) > 1)
            return 0;
    }
    return 1;
}

int main(int argc, char **argv)
{
    const char *expect_renderer = NULL;
    static unsigned char pixels[HEIGHT][WIDTH][4];
    int inside = 0, outside = 0, wrong = 0, first_x = -1, first_y = -1;
    GLuint program;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--expect-renderer") == 0 && i + 1 < argc)
            expect_renderer = argv[++i];
        else
            fail("bad argument '%s' (usage: gl-offscreen [--expect-renderer TEXT])", argv[i]);
    }
    gl_setup(expect_renderer);
    make_framebuffer(WIDTH, HEIGHT);
    program = build_program(vertex_source, fragment_source);

    glClearColor(clear_colour[0] / 255.0f, clear_colour[1] / 255.0f, clear_colour[2] / 255.0f,
                 clear_colour[3] / 255.0f);
    glClear(GL_COLOR_BUFFER_BIT);
    glUniform4f(glGetUniformLocation(program, "colour"), triangle_colour[0] / 255.0f,
                triangle_colour[1] / 255.0f, triangle_colour[2] / 255.0f, triangle_colour[3] / 255.0f);
    glVertexAttribPointer(0, 2, GL_FLOAT, GL_FALSE, 0, corners);
    glEnableVertexAttribArray(0);
    glDrawArrays(GL_TRIANGLES, 0, 3);
    check_gl("drawing");
    glReadPixels(0, 0, WIDTH, HEIGHT, GL_RGBA, GL_UNSIGNED_BYTE, pixels);
    check_gl("glReadPixels");

    for (int y = 0; y < HEIGHT; y++) {
        for (int x = 0; x < WIDTH; x++) {
            const unsigned char *want = expected_colour(x, y);

            if (!want)
                continue;
            if (want == triangle_colour)
                inside++;
            else
                outside++;
            if (!close_enough(pixels[y][x], want) && wrong++ == 0) {
                first_x = x;
                first_y = y;
            }
        }
    }
    note("checked %d pixels inside and %d outside the triangle, of %d", inside, outside,
         WIDTH * HEIGHT);
    if (wrong) {
        const unsigned char *got = pixels[first_y][first_x];
        const unsigned char *want = expected_colour(first_x, first_y);

        fail("%d pixels wrong; first at (%d, %d) from the bottom left: got (%d, %d, %d, %d), "
             "expected (%d, %d, %d, %d)",
             wrong, first_x, first_y, got[0], got[1], got[2], got[3], want[0], want[1], want[2],
             want[3]);
    }
    pass();
}
