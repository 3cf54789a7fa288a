/* Small helpers shared by the guest tests: every test ends with exactly one
 * line "PASS: <name>" or "FAIL: <name>: <reason>" on stdout. */
#ifndef GUEST_TESTS_COMMON_H
#define GUEST_TESTS_COMMON_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* Defined by each program: the name in its PASS/FAIL line. */
extern const char *const test_name;

/* Informational line, prefixed with the test's name. */
__attribute__((format(printf, 1, 2))) static inline void note(const char *fmt, ...)
{
    va_list ap;

    printf("%s: ", test_name);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

__attribute__((format(printf, 1, 2), noreturn)) static inline void fail(const char *fmt, ...)
{
    va_list ap;

    printf("FAIL: %s: ", test_name);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
    exit(1);
}

__attribute__((noreturn)) static inline void pass(void)
{
    printf("PASS: %s\n", test_name);
    fflush(stdout);
    exit(0);
}

/* Parse a non-negative decimal integer argument in [min, max] or fail. */
static inline long parse_number(const char *option, const char *text, long min, long max)
{
    char *end;
    long value = strtol(text, &end, 10);

    if (*text == '\0' || *end != '\0' || value < min || value > max)
        fail("%s wants a number from %ld to %ld, got '%s'", option, min, max, text);
    return value;
}

#endif
