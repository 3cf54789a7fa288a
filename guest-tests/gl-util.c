#include <string.h>

#include "common.h"
#include "gl-util.h"

int has_extension(const char *list, const char *name)
{
    size_t len = strlen(name);

    for (const char *p = list; p && (p = strstr(p, name)) != NULL; p += len) {
        int starts = p == list || p[-1] == ' ';
        int ends = p[len] == '\0' || p[len] == ' ';

        if (starts && ends)
            return 1;
    }
    return 0;
}

EGLDisplay gl_setup(const char *expect_renderer)
{
    static const EGLint config_attribs[] = {
        EGL_SURFACE_TYPE, EGL_PBUFFER_BIT,
        EGL_RENDERABLE_TYPE, EGL_OPENGL_ES2_BIT,
        EGL_RED_SIZE, 8, EGL_GREEN_SIZE, 8, EGL_BLUE_SIZE, 8,
        EGL_NONE,
    };
    static const EGLint context_attribs[] = { EGL_CONTEXT_CLIENT_VERSION, 2, EGL_NONE };
    const char *client_exts = eglQueryString(EGL_NO_DISPLAY, EGL_EXTENSIONS);
    EGLDisplay dpy;
    EGLConfig config;
    EGLContext ctx;
    EGLint major, minor, count = 0;
    const char *renderer;

    if (!has_extension(client_exts, "EGL_MESA_platform_surfaceless"))
        fail("EGL_MESA_platform_surfaceless is missing (client extensions: %s)",
             client_exts ? client_exts : "none");
    dpy = eglGetPlatformDisplay(EGL_PLATFORM_SURFACELESS_MESA, EGL_DEFAULT_DISPLAY, NULL);
    if (dpy == EGL_NO_DISPLAY)
        fail("eglGetPlatformDisplay(surfaceless) failed: 0x%x", eglGetError());
    if (!eglInitialize(dpy, &major, &minor))
        fail("eglInitialize failed: 0x%x", eglGetError());
    note("EGL %d.%d, vendor %s", major, minor, eglQueryString(dpy, EGL_VENDOR));
    if (!has_extension(eglQueryString(dpy, EGL_EXTENSIONS), "EGL_KHR_surfaceless_context"))
        fail("EGL_KHR_surfaceless_context is missing");
    if (!eglBindAPI(EGL_OPENGL_ES_API))
        fail("eglBindAPI(GLES) failed: 0x%x", eglGetError());
    if (!eglChooseConfig(dpy, config_attribs, &config, 1, &count) || count < 1)
        fail("no RGB8 GLES2 config (error 0x%x)", eglGetError());
    ctx = eglCreateContext(dpy, config, EGL_NO_CONTEXT, context_attribs);
    if (ctx == EGL_NO_CONTEXT)
        fail("eglCreateContext failed: 0x%x", eglGetError());
    if (!eglMakeCurrent(dpy, EGL_NO_SURFACE, EGL_NO_SURFACE, ctx))
        fail("eglMakeCurrent without a surface failed: 0x%x", eglGetError());

    renderer = (const char *)glGetString(GL_RENDERER);
    note("GL_RENDERER: %s", renderer ? renderer : "(null)");
    note("GL_VERSION: %s", (const char *)glGetString(GL_VERSION));
    if (expect_renderer && (!renderer || !strstr(renderer, expect_renderer)))
        fail("GL_RENDERER '%s' does not contain '%s'", renderer ? renderer : "(null)",
             expect_renderer);
    return dpy;
}

static GLuint compile(GLenum type, const char *source)
{
    GLuint shader = glCreateShader(type);
    GLint ok = 0;
    char log[1024] = "";

    glShaderSource(shader, 1, &source, NULL);
    glCompileShader(shader);
    glGetShaderiv(shader, GL_COMPILE_STATUS, &ok);
    if (!ok) {
        glGetShaderInfoLog(shader, sizeof(log), NULL, log);
        fail("%s shader does not compile: %s", type == GL_VERTEX_SHADER ? "vertex" : "fragment", log);
    }
    return shader;
}

GLuint build_program(const char *vertex_source, const char *fragment_source)
{
    GLuint program = glCreateProgram();
    GLint ok = 0;
    char log[1024] = "";

    glAttachShader(program, compile(GL_VERTEX_SHADER, vertex_source));
    glAttachShader(program, compile(GL_FRAGMENT_SHADER, fragment_source));
    glBindAttribLocation(program, 0, "position");
    glLinkProgram(program);
    glGetProgramiv(program, GL_LINK_STATUS, &ok);
    if (!ok) {
        glGetProgramInfoLog(program, sizeof(log), NULL, log);
        fail("program does not link: %s", log);
    }
    glUseProgram(program);
    return program;
}

GLuint make_framebuffer(int width, int height)
{
    GLuint texture, fbo;
    GLenum status;

    glGenTextures(1, &texture);
    glBindTexture(GL_TEXTURE_2D, texture);
    glTexImage2D(GL_TEXTURE_2D, 0, GL_RGBA, width, height, 0, GL_RGBA, GL_UNSIGNED_BYTE, NULL);
    glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MIN_FILTER, GL_NEAREST);
    glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MAG_FILTER, GL_NEAREST);
    glGenFramebuffers(1, &fbo);
    glBindFramebuffer(GL_FRAMEBUFFER, fbo);
    glFramebufferTexture2D(GL_FRAMEBUFFER, GL_COLOR_ATTACHMENT0, GL_TEXTURE_2D, texture, 0);
    status = glCheckFramebufferStatus(GL_FRAMEBUFFER);
    if (status != GL_FRAMEBUFFER_COMPLETE)
        fail("%dx%d RGBA framebuffer is incomplete: 0x%x", width, height, status);
    glViewport(0, 0, width, height);
    check_gl("framebuffer set-up");
    return fbo;
}

void check_gl(const char *what)
{
    GLenum error = glGetError();

    if (error != GL_NO_ERROR)
        fail("GL error 0x%x after %s", error, what);
}
