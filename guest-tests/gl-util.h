/* EGL (surfaceless platform) + GLES2 set-up shared by gl-offscreen and fences. */
#ifndef GUEST_TESTS_GL_UTIL_H
#define GUEST_TESTS_GL_UTIL_H

#include <EGL/egl.h>
#include <EGL/eglext.h>
#include <GLES2/gl2.h>

/* Opens the surfaceless display, makes a GLES2 context current without a
 * surface, prints GL_RENDERER and fails unless it contains expect_renderer
 * (when not NULL). Returns the display. */
EGLDisplay gl_setup(const char *expect_renderer);

/* Does the space-separated extension list contain name? */
int has_extension(const char *list, const char *name);

/* Compiles and links a program from two sources; fails the test on error. */
GLuint build_program(const char *vertex_source, const char *fragment_source);

/* Creates a width x height RGBA8 texture, attaches it to a new framebuffer
 * and leaves that framebuffer bound (with the viewport set). */
GLuint make_framebuffer(int width, int height);

/* Fails the test if GL reported an error. */
void check_gl(const char *what);

#endif
