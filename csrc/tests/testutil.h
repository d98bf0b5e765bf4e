/* testutil.h - tiny harness for the C core's tests (no Python). */
#ifndef OVL_TESTUTIL_H
#define OVL_TESTUTIL_H

#include <stdio.h>
#include <string.h>

#include "ovl.h"

extern int t_failures;
extern char t_root[];

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, \
				__LINE__, #cond);                              \
			t_failures++;                                          \
		}                                                              \
	} while (0)

#define CHECK_EQ(a, b)                                                         \
	do {                                                                   \
		long long _a = (long long)(a), _b = (long long)(b);            \
		if (_a != _b) {                                                \
			fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n",  \
				__FILE__, __LINE__, #a, _a, _b);               \
			t_failures++;                                          \
		}                                                              \
	} while (0)

/* Temp tree under t_root; paths given to helpers are relative to it. */
void t_setup(const char *name);
int t_teardown(void);	/* removes the tree; returns the exit status */
const char *t_path(const char *rel);	/* static buffer */
void t_mkdir(const char *rel);
void t_file(const char *rel, const char *content);
void t_whiteout(const char *rel);
void t_symlink(const char *target, const char *rel);
void t_xattr(const char *rel, const char *name, const char *value);

/* Open a read-only stack of the given lowers (relative names), top first. */
struct ovl_stack *t_open(const char *const *lowers, size_t n, int whiteouts);
/* Layer index supplying path, or -errno. */
int t_layer(struct ovl_stack *s, const char *path, unsigned flags);
/* Merged listing joined with ',' into a static buffer, or "ERR<n>". */
const char *t_list(struct ovl_stack *s, const char *path);

#endif
