/* testutil.c - helpers for the C core's tests. */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

int t_failures;
char t_root[4096];

static void die(const char *what, const char *rel)
{
	fprintf(stderr, "setup failed: %s %s: %s\n", what, rel, strerror(errno));
	exit(2);
}

void t_setup(const char *name)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(t_root, sizeof(t_root), "%s/ovltest-%s-XXXXXX", tmp ? tmp : "/tmp", name);
	if (!mkdtemp(t_root))
		die("mkdtemp", t_root);
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

int t_teardown(void)
{
	static int reported;
	int fresh = t_failures - reported;

	nftw(t_root, rm_one, 64, FTW_DEPTH | FTW_PHYS);
	reported = t_failures;
	if (fresh)
		fprintf(stderr, "%s: %d check(s) failed\n", t_root, fresh);
	return fresh ? 1 : 0;
}

const char *t_path(const char *rel)
{
	static char buf[8192];

	snprintf(buf, sizeof(buf), "%s/%s", t_root, rel);
	return buf;
}

void t_mkdir(const char *rel)
{
	char buf[8192], *p;

	snprintf(buf, sizeof(buf), "%s", t_path(rel));
	for (p = buf + strlen(t_root) + 1; (p = strchr(p, '/')); p++) {
		*p = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			die("mkdir", buf);
		*p = '/';
	}
	if (mkdir(buf, 0755) < 0 && errno != EEXIST)
		die("mkdir", buf);
}

static void parent_of(const char *rel)
{
	char buf[4096], *slash;

	snprintf(buf, sizeof(buf), "%s", rel);
	slash = strrchr(buf, '/');
	if (slash) {
		*slash = '\0';
		t_mkdir(buf);
	}
}

void t_file(const char *rel, const char *content)
{
	int fd;

	parent_of(rel);
	fd = open(t_path(rel), O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, content, strlen(content)) < 0)
		die("write", rel);
	close(fd);
}

void t_whiteout(const char *rel)
{
	parent_of(rel);
	if (mknod(t_path(rel), S_IFCHR | 0600, makedev(0, 0)) < 0)
		die("mknod", rel);
}

void t_symlink(const char *target, const char *rel)
{
	parent_of(rel);
	if (symlink(target, t_path(rel)) < 0)
		die("symlink", rel);
}

void t_xattr(const char *rel, const char *name, const char *value)
{
	if (lsetxattr(t_path(rel), name, value, strlen(value), 0) < 0)
		die("setxattr", rel);
}

struct ovl_stack *t_open(const char *const *lowers, size_t n, int whiteouts)
{
	char *paths[64];
	struct ovl_config cfg = { 0 };
	struct ovl_stack *s = NULL;
	int err;

	for (size_t i = 0; i < n; i++)
		paths[i] = strdup(t_path(lowers[i]));
	cfg.lowers = (const char *const *)paths;
	cfg.nlowers = n;
	cfg.whiteouts = whiteouts ? whiteouts : OVL_WHITEOUT_AUTO;
	err = ovl_stack_open(&cfg, &s, NULL);
	for (size_t i = 0; i < n; i++)
		free(paths[i]);
	if (err) {
		fprintf(stderr, "ovl_stack_open: %s\n", strerror(-err));
		exit(2);
	}
	return s;
}

int t_layer(struct ovl_stack *s, const char *path, unsigned flags)
{
	struct ovl_info info;
	int err = ovl_lookup(s, path, flags, &info);

	return err ? err : info.layer;
}

const char *t_list(struct ovl_stack *s, const char *path)
{
	static char buf[8192];
	struct ovl_dirlist *l;
	size_t n = 0;
	int err = ovl_listdir(s, path, 0, &l);

	if (err) {
		snprintf(buf, sizeof(buf), "ERR%d", -err);
		return buf;
	}
	buf[0] = '\0';
	for (size_t i = 0; i < l->n; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%s", i ? "," : "",
				      l->ents[i].name);
	ovl_dirlist_free(l);
	return buf;
}
