/* apply.c - applying a layer tar: graphdriver ApplyDiff, umoci raw unpack.
 *
 * The tar reader (tar.c) hands out entries; each is made under the target
 * root, fd-relative.  The rules, in the order an entry meets them:
 *
 * Names.  A leading "/" is dropped and the name cleaned lexically ("." and
 * empty components go, ".." takes the one before it); a name that is empty
 * or whose ".." climbs above the root is refused (OVL_APPLY_E_UNSAFE), as
 * is one holding a NUL.  The cleaned name "" (the entry "./") is skipped:
 * the root's metadata is not the layer's to set (dockerd's overlay2).
 * Hardlink targets follow the same rules.
 *
 * Parents.  The parent is opened with openat2(RESOLVE_IN_ROOT |
 * RESOLVE_NO_MAGICLINKS) from the root: a symlink met on the way resolves
 * inside the root ("/" is the root), so nothing reaches outside it.  A
 * missing parent is made (0755 root:root, or the mode and owner the lowers
 * show for that path, containerd's WithParents); a parent that is a
 * whiteout of this layer becomes an opaque directory (what the kernel does
 * for a mkdir over a whiteout); a parent that is anything else but a
 * directory is OVL_APPLY_E_CONFLICT.
 *
 * The last component is never followed: created with O_EXCL / mkdirat /
 * symlinkat / mknodat / linkat; owners, modes, xattrs and times are set on
 * the new fd or with AT_SYMLINK_NOFOLLOW; chown comes before chmod, so
 * set-id bits survive.  If the name exists, the last entry wins: a
 * directory over a directory merges and takes the new metadata, anything
 * else is removed (a directory with its contents) and made anew.
 * Hardlinks get no metadata of their own (they share the target's), so a
 * hardlink to a symlink can never lead a chmod through it.
 *
 * Xattrs come from SCHILY.xattr.* records.  <ns>.overlay.* names, for both
 * namespaces, are stored escaped as <ns>.overlay.overlay.* (what the
 * kernel does for a nested overlay), so a tar can never plant overlay
 * metadata; "user." xattrs a symlink or device cannot carry (EPERM) and
 * xattrs the filesystem does not support are skipped.
 *
 * Devices: a char device 0:0 is refused (OVL_APPLY_E_WHITEOUT: only ".wh."
 * names express whiteouts in a tar); without OVL_APPLY_DEVICES char and
 * block devices are skipped (counted), fifos are always made.  Ids at or
 * past 2^32 - 1 and device numbers past 2^32 are OVL_APPLY_E_CORRUPT.
 *
 * Whiteouts (a base name starting ".wh."): ".wh." alone, ".wh..",
 * ".wh..." and the whiteout of another marker (".wh..wh.x") are
 * OVL_APPLY_E_WHITEOUT.  In layer mode ".wh.NAME" makes NAME a whiteout
 * unless this layer made NAME (the OCI rule: a whiteout hides only what is
 * below); its parent is made if missing (dockerd).  A whiteout in a
 * directory this layer made opaque is still made (redundant, as dockerd
 * makes it).  In rootfs mode it deletes NAME unless this layer made it;
 * a missing parent means nothing to delete.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "ovl_internal.h"

#define IN_ROOT (RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
#define SPLIT_MAGIC "OVLTSPL1"
#define SPLIT_RAW 1
#define SPLIT_DATA 2
#define SPLIT_ZERO 3

/* A parent directory opened lately: its union path, an O_PATH fd, whether
 * it is setgid (new objects take its group).  A key may pass symlinks, so
 * the cache is emptied whenever anything that exists is removed or
 * replaced (duplicates only: rare); creating never changes what a cached
 * path resolves to. */
#define PCACHE 32
struct pcache_ent {
	char *path;		/* NULL: free slot */
	size_t len;
	int fd;
	bool setgid;
	gid_t gid;
	uint64_t used;
};

struct dir_time {
	char *path;
	ino_t ino;
	struct timespec ts[2];
};

/* A set of paths (open addressing): what this layer made. */
struct pathset {
	char **slot;
	size_t mask, n;
};

struct ovl_apply {
	int mode;
	unsigned flags;
	uint64_t max_size;
	int parent_fd;		/* layer mode: dest's parent */
	char *dest_name;
	char tmp[64];
	bool tmp_made, published;
	int root;		/* O_PATH of the tree being built */
	struct ovl_stack *lowers;
	struct ovl_tar *tar;
	uid_t euid;
	gid_t egid;
	mode_t umask;

	/* the entry being applied */
	char path[PATH_MAX];
	size_t plen;
	const struct ovl_tar_member *e;
	int fd;			/* regular file being written, -1 */
	bool seq;		/* data written sequentially (not sparse) */

	/* parents opened lately (most entries share a few) */
	struct pcache_ent pc[PCACHE];
	uint64_t tick;
	bool psetgid;		/* the current parent: new objects take its group */
	gid_t pgid;

	struct dir_time *dirs;
	size_t ndirs, capdirs;
	struct pathset made;
	bool root_opaque;
	bool root_xmark;

	char x_opaque[40], x_whiteout[40];

	int cls, err;
	char *ename;
	size_t enamelen;

	uint8_t *split;
	size_t split_len, split_cap;
	size_t zero_at;		/* offset of the last ZERO record's count, or SIZE_MAX */
	bool failed;

	struct ovl_apply_stats st;
};

static int set_error(struct ovl_apply *a, int cls, int err)
{
	if (a->cls)
		return a->err;
	a->cls = cls;
	a->err = err;
	if (a->e && !a->ename) {
		a->ename = malloc(a->e->namelen + 1);
		if (a->ename) {
			memcpy(a->ename, a->e->name, a->e->namelen);
			a->ename[a->e->namelen] = 0;
			a->enamelen = a->e->namelen;
		}
	}
	return err;
}

static int io(struct ovl_apply *a, int err)
{
	return err ? set_error(a, OVL_APPLY_E_IO, err) : 0;
}

/* --- path sets ---------------------------------------------------------- */

static int pathset_add(struct pathset *ps, const char *p, size_t len)
{
	uint32_t h;
	size_t i;

	if ((ps->n + 1) * 2 > ps->mask + 1 || !ps->slot) {
		size_t nmask = ps->slot ? ps->mask * 2 + 1 : 1023;
		char **ns = calloc(nmask + 1, sizeof(*ns));

		if (!ns)
			return -ENOMEM;
		for (i = 0; ps->slot && i <= ps->mask; i++) {
			char *s = ps->slot[i];
			size_t j;

			if (!s)
				continue;
			j = ovl_name_hash(s, strlen(s)) & nmask;
			while (ns[j])
				j = (j + 1) & nmask;
			ns[j] = s;
		}
		free(ps->slot);
		ps->slot = ns;
		ps->mask = nmask;
	}
	h = ovl_name_hash(p, len);
	for (i = h & ps->mask; ps->slot[i]; i = (i + 1) & ps->mask)
		if (!strncmp(ps->slot[i], p, len) && !ps->slot[i][len])
			return 0;
	ps->slot[i] = strndup(p, len);
	if (!ps->slot[i])
		return -ENOMEM;
	ps->n++;
	return 0;
}

static bool pathset_has(const struct pathset *ps, const char *p, size_t len)
{
	if (!ps->slot)
		return false;
	for (size_t i = ovl_name_hash(p, len) & ps->mask; ps->slot[i]; i = (i + 1) & ps->mask)
		if (!strncmp(ps->slot[i], p, len) && !ps->slot[i][len])
			return true;
	return false;
}

static void pathset_free(struct pathset *ps)
{
	for (size_t i = 0; ps->slot && i <= ps->mask; i++)
		free(ps->slot[i]);
	free(ps->slot);
	ps->slot = NULL;
}

/* Does this apply need to know what it made?  Rootfs mode (whiteouts
 * spare it), and layer mode (a whiteout spares it too). */
static int note_made(struct ovl_apply *a, const char *p, size_t len)
{
	int err = pathset_add(&a->made, p, len);

	return err ? io(a, err) : 0;
}

/* --- tar-split records --------------------------------------------------- */

static int split_put(struct ovl_apply *a, const void *p, size_t n)
{
	if (a->split_len + n > a->split_cap) {
		size_t ncap = a->split_cap ? a->split_cap : 4096;
		uint8_t *nb;

		while (ncap < a->split_len + n)
			ncap *= 2;
		nb = realloc(a->split, ncap);
		if (!nb)
			return -ENOMEM;
		a->split = nb;
		a->split_cap = ncap;
	}
	memcpy(a->split + a->split_len, p, n);
	a->split_len += n;
	return 0;
}

static int split_u64(struct ovl_apply *a, uint64_t v)
{
	uint8_t b[8];

	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	return split_put(a, b, 8);
}

static int split_raw(struct ovl_apply *a, const void *p, size_t n)
{
	uint8_t t = SPLIT_RAW;
	int err;

	if (!n)
		return 0;
	a->zero_at = SIZE_MAX;
	err = split_put(a, &t, 1);
	if (!err)
		err = split_u64(a, n);
	return err ? err : split_put(a, p, n);
}

static int split_zero(struct ovl_apply *a, uint64_t n)
{
	uint8_t t = SPLIT_ZERO;
	int err;

	if (a->zero_at != SIZE_MAX) {
		uint64_t v = 0;

		for (int i = 7; i >= 0; i--)
			v = (v << 8) | a->split[a->zero_at + (size_t)i];
		v += n;
		for (int i = 0; i < 8; i++)
			a->split[a->zero_at + (size_t)i] = (uint8_t)(v >> (8 * i));
		return 0;
	}
	err = split_put(a, &t, 1);
	a->zero_at = a->split_len;
	return err ? err : split_u64(a, n);
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* --- names --------------------------------------------------------------- */

/* Join the components of in (len bytes) to out (*olen bytes, already
 * clean), dropping "" and "." components.  ".." removes the last component
 * of out; at the root it is -EXDEV, or with clamp stays at the root (the
 * way RESOLVE_IN_ROOT walks).  Return 0 or -EXDEV or -ENAMETOOLONG. */
static int join_clean(char *out, size_t *olen, const char *in, size_t len, bool clamp)
{
	size_t n = *olen, i = 0;

	while (i < len) {
		size_t j = i, cl;

		while (j < len && in[j] != '/')
			j++;
		cl = j - i;
		if (cl == 2 && in[i] == '.' && in[i + 1] == '.') {
			if (!n && !clamp)
				return -EXDEV;
			while (n && out[n - 1] != '/')
				n--;
			if (n)
				n--;
		} else if (cl && !(cl == 1 && in[i] == '.')) {
			if (cl > OVL_NAME_MAX || n + cl + 2 >= PATH_MAX)
				return -ENAMETOOLONG;
			if (n)
				out[n++] = '/';
			memcpy(out + n, in + i, cl);
			n += cl;
		}
		i = j + 1;
	}
	out[n] = 0;
	*olen = n;
	return 0;
}

/* Clean an entry name or hardlink target lexically into out.  Return 0
 * (out "" for the root), -EXDEV if it escapes, -EINVAL if empty or holding
 * a NUL, -ENAMETOOLONG. */
static int clean_name(const char *name, size_t len, char *out, size_t *outlen)
{
	if (!len || memchr(name, 0, len))
		return -EINVAL;
	*outlen = 0;
	return join_clean(out, outlen, name, len, false);
}

static int name_error(struct ovl_apply *a, int r)
{
	return set_error(a, r == -ENAMETOOLONG ? OVL_APPLY_E_IO : OVL_APPLY_E_UNSAFE,
			 r == -EINVAL || r == -EXDEV ? -EXDEV : r);
}

/* The base name of path (plen bytes). */
static const char *base_of(const char *path, size_t plen, size_t *dirlen)
{
	const char *s = memrchr(path, '/', plen);

	*dirlen = s ? (size_t)(s - path) : 0;
	return s ? s + 1 : path;
}

/* --- small fd-relative helpers ----------------------------------------- */

static int open_in_root(struct ovl_apply *a, const char *path, int flags)
{
	return ovl_sys_openat2(a->root, *path ? path : ".",
			       (uint64_t)(flags | O_CLOEXEC), IN_ROOT);
}

/* setxattr on dfd/name (name "" for dfd itself), never following. */
static int xattr_set_at(int dfd, const char *name, const char *xname, const void *v,
			size_t n)
{
	char proc[64];
	int fd, r;

	if (!*name) {
		/* O_PATH fds take no fsetxattr: through /proc, which reaches
		 * the object itself */
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", dfd);
		return setxattr(proc, xname, v, n, 0) < 0 ? -errno : 0;
	}
	r = ovl_sys_setxattrat(dfd, name, AT_SYMLINK_NOFOLLOW, xname, v, n, 0);
	if (r != -ENOSYS)
		return r;
	fd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	r = setxattr(proc, xname, v, n, 0) < 0 ? -errno : 0;
	close(fd);
	return r;
}

static int chmod_nofollow(int dfd, const char *name, mode_t mode)
{
	char proc[64];
	int fd, r;

	r = ovl_sys_fchmodat2(dfd, name, mode, AT_SYMLINK_NOFOLLOW);
	if (r != -ENOSYS && r != -EINVAL)
		return r;
	fd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	r = chmod(proc, mode) < 0 ? -errno : 0;
	close(fd);
	return r;
}

/* Remove dfd/name, a directory with everything in it. */
static int remove_at(int dfd, const char *name)
{
	DIR *d;
	struct dirent *de;
	int fd, err = 0;

	if (unlinkat(dfd, name, 0) == 0)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -errno;
	fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while (!err && (errno = 0, de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		err = remove_at(fd, de->d_name);
	}
	closedir(d);
	if (!err && unlinkat(dfd, name, AT_REMOVEDIR) < 0)
		err = -errno;
	return err;
}

static bool is_wh_stat(struct ovl_apply *a, int dfd, const char *name, const struct stat *st)
{
	char v[2];

	if (ovl_is_whiteout_stat(st))
		return true;
	if (!S_ISREG(st->st_mode) || st->st_size)
		return false;
	return ovl_sys_getxattrat(dfd, name, AT_SYMLINK_NOFOLLOW, a->x_whiteout, v, 0) >= 0;
}

/* Empty the parent cache but for the entry whose fd is keep (in use). */
static void pcache_flush(struct ovl_apply *a, int keep)
{
	for (int i = 0; i < PCACHE; i++) {
		struct pcache_ent *c = &a->pc[i];

		if (!c->path || (keep >= 0 && c->fd == keep))
			continue;
		if (c->fd != a->root)
			close(c->fd);
		free(c->path);
		c->path = NULL;
	}
}

/* --- metadata ------------------------------------------------------------ */

static bool xattr_overlay(const char *name, size_t *nslen)
{
	if (!strncmp(name, "trusted.overlay.", 16)) {
		*nslen = 16;
		return true;
	}
	if (!strncmp(name, "user.overlay.", 13)) {
		*nslen = 13;
		return true;
	}
	return false;
}

/* Set one tar xattr on dfd/name (fd >= 0: on it), escaping overlay names. */
static int set_one_xattr(int fd, int dfd, const char *name,
			 const char *xname, const void *v, size_t n)
{
	char esc[300];
	size_t nslen;
	int r;

	if (xattr_overlay(xname, &nslen)) {
		snprintf(esc, sizeof(esc), "%.*soverlay.%s", (int)nslen, xname, xname + nslen);
		xname = esc;
	}
	if (fd >= 0)
		r = fsetxattr(fd, xname, v, n, 0) < 0 ? -errno : 0;
	else
		r = xattr_set_at(dfd, name, xname, v, n);
	if (r == -EOPNOTSUPP || (r == -EPERM && !strncmp(xname, "user.", 5)))
		return 0;
	return r;
}

static int check_ids(struct ovl_apply *a, const struct ovl_tar_member *e)
{
	if (e->uid >= 0xffffffffu || e->gid >= 0xffffffffu)
		return set_error(a, OVL_APPLY_E_CORRUPT, -ERANGE);
	return 0;
}

static bool need_chown(const struct ovl_apply *a, const struct ovl_tar_member *e)
{
	gid_t g = a->psetgid ? a->pgid : a->egid;

	return (a->flags & OVL_APPLY_SAME_OWNER) && ((uid_t)e->uid != a->euid || (gid_t)e->gid != g);
}

/* Owner, mode, xattrs (times separately) on fd of the new object. */
static int meta_fd(struct ovl_apply *a, int fd, const struct ovl_tar_member *e, bool chmod_needed)
{
	int err;

	if (need_chown(a, e) && fchown(fd, (uid_t)e->uid, (gid_t)e->gid) < 0)
		return -errno;
	if ((chmod_needed || (e->mode & 07000)) &&
	    fchmod(fd, e->mode & 07777) < 0)
		return -errno;
	for (size_t i = 0; i < e->nxattrs; i++) {
		err = set_one_xattr(fd, -1, NULL, e->xattrs[i].name, e->xattrs[i].value,
				    e->xattrs[i].len);
		if (err)
			return err;
	}
	return 0;
}

static void entry_times(const struct ovl_tar_member *e, struct timespec ts[2])
{
	ts[1] = e->mtime;
	ts[0] = e->has_atime ? e->atime : e->mtime;
}

/* Would creating with mode give exactly mode (no umask bits, no set-id)? */
static bool mode_exact(const struct ovl_apply *a, mode_t mode)
{
	return !(mode & 07000) && !(mode & a->umask);
}

/* --- parents ------------------------------------------------------------- */

/* Make the implied directory dfd/name for union path upath (ulen bytes). */
static int mkdir_implied(struct ovl_apply *a, int dfd, const char *name, const char *upath,
			 size_t ulen)
{
	mode_t mode = 0755;
	uid_t uid = 0;
	gid_t gid = 0;
	int fd, err = 0;

	if (a->lowers) {
		struct ovl_info info;
		char *p = strndup(upath, ulen);

		if (!p)
			return -ENOMEM;
		if (ovl_lookup(a->lowers, p, OVL_LOOKUP_FOLLOW, &info) == 0 &&
		    S_ISDIR(info.st.st_mode)) {
			mode = info.st.st_mode & 07777;
			uid = info.st.st_uid;
			gid = info.st.st_gid;
		}
		free(p);
	}
	if (mkdirat(dfd, name, 0700) < 0)
		return -errno;
	fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if ((a->flags & OVL_APPLY_SAME_OWNER) && (uid != a->euid || gid != a->egid) &&
	    fchown(fd, uid, gid) < 0)
		err = -errno;
	if (!err && fchmod(fd, mode) < 0)
		err = -errno;
	close(fd);
	if (!err)
		err = note_made(a, upath, ulen);
	return err;
}

/* Turn the whiteout dfd/name into an opaque directory (mkdir over a
 * whiteout, as the kernel does). */
static int whiteout_to_dir(struct ovl_apply *a, int dfd, const char *name, mode_t mode)
{
	pcache_flush(a, dfd);
	if (unlinkat(dfd, name, 0) < 0 || mkdirat(dfd, name, mode) < 0)
		return -errno;
	return xattr_set_at(dfd, name, a->x_opaque, "y", 1);
}

static int open_parent_at(struct ovl_apply *a, const char *path, size_t len, bool create,
			  int depth);

/* A symlink met on the way whose target is missing: the directories to
 * make are where it points, inside the root (what RESOLVE_IN_ROOT would
 * have reached; containerd and umoci make them there too).  link is
 * prev/comp, the path up to it buf[0..dl); rest the components after it. */
static int follow_dangling(struct ovl_apply *a, int prev, const char *comp, const char *buf,
			   size_t dl, const char *rest, size_t restlen, int depth)
{
	char target[PATH_MAX], np[PATH_MAX];
	size_t n = 0;
	ssize_t tl;
	int err;

	if (depth >= OVL_MAX_SYMLINKS)
		return set_error(a, OVL_APPLY_E_IO, -ELOOP);
	tl = readlinkat(prev, comp, target, sizeof(target) - 1);
	if (tl < 0)
		return io(a, -errno);
	if (target[0] != '/') {
		memcpy(np, buf, dl);
		n = dl;
		np[n] = 0;
	}
	err = join_clean(np, &n, target, (size_t)tl, true);
	if (!err)
		err = join_clean(np, &n, rest, restlen, true);
	if (err)
		return io(a, err);
	return open_parent_at(a, np, n, true, depth + 1);
}

/* Open (O_PATH) the directory at path[0..len) inside the root, making what
 * is missing.  Return an fd (a->root for ""), cached; or -errno with the
 * error class set. */
static int open_parent(struct ovl_apply *a, const char *path, size_t len, bool create)
{
	return open_parent_at(a, path, len, create, 0);
}

static int open_parent_at(struct ovl_apply *a, const char *path, size_t len, bool create,
			  int depth)
{
	char buf[PATH_MAX];
	int fd, prev, err;
	size_t i;
	struct stat st;

	struct pcache_ent *c, *victim = NULL;

	for (i = 0; i < PCACHE; i++) {
		c = &a->pc[i];
		if (c->path && c->len == len && !memcmp(c->path, path, len)) {
			c->used = ++a->tick;
			a->psetgid = c->setgid;
			a->pgid = c->gid;
			return c->fd;
		}
		if (!victim || !c->path || (victim->path && c->used < victim->used))
			victim = c;
	}
	memcpy(buf, path, len);
	buf[len] = 0;
	fd = len ? open_in_root(a, buf, O_PATH | O_DIRECTORY) : a->root;
	if (fd == -ENOENT || fd == -ENOTDIR) {
		if (!create)
			return fd;
		/* Walk it, making the missing directories. */
		prev = a->root;
		for (i = 0; i <= len; i++) {
			const char *comp;
			size_t dl;

			if (i < len && buf[i] != '/')
				continue;
			buf[i] = 0;
			fd = open_in_root(a, buf, O_PATH | O_DIRECTORY);
			comp = base_of(buf, i, &dl);
			if (fd == -ENOENT || fd == -ENOTDIR) {
				if (fstatat(prev, comp, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
				    S_ISLNK(st.st_mode)) {
					char rest[PATH_MAX];
					size_t rl = i < len ? len - i - 1 : 0;

					memcpy(rest, path + len - rl, rl);
					err = follow_dangling(a, prev, comp, buf, dl, rest, rl, depth);
					if (prev != a->root)
						close(prev);
					return err;
				} else if (fstatat(prev, comp, &st, AT_SYMLINK_NOFOLLOW) == 0) {
					if (a->mode == OVL_APPLY_LAYER && is_wh_stat(a, prev, comp, &st))
						err = whiteout_to_dir(a, prev, comp, 0755);
					else
						err = set_error(a, OVL_APPLY_E_CONFLICT, -ENOTDIR);
				} else {
					err = mkdir_implied(a, prev, comp, buf, i);
				}
				fd = err ? err : open_in_root(a, buf, O_PATH | O_DIRECTORY);
			}
			if (prev != a->root)
				close(prev);
			if (fd < 0)
				return a->cls ? fd : io(a, fd);
			prev = fd;
			if (i < len)
				buf[i] = '/';
		}
	} else if (fd < 0) {
		return io(a, fd);
	}
	a->psetgid = false;
	if (fstat(fd, &st) == 0 && (st.st_mode & S_ISGID)) {
		a->psetgid = true;
		a->pgid = st.st_gid;
	}
	/* the walk above may have emptied the cache: find a slot again */
	for (i = 0; i < PCACHE && victim && victim->path; i++)
		if (!a->pc[i].path || a->pc[i].used < victim->used)
			victim = &a->pc[i];
	if (victim->path) {
		if (victim->fd != a->root)
			close(victim->fd);
		free(victim->path);
	}
	victim->path = malloc(len + 1);
	if (!victim->path) {
		if (fd != a->root)
			close(fd);
		return io(a, -ENOMEM);
	}
	memcpy(victim->path, path, len);
	victim->path[len] = 0;
	victim->len = len;
	victim->fd = fd;
	victim->setgid = a->psetgid;
	victim->gid = a->pgid;
	victim->used = ++a->tick;
	return fd;
}

/* Make room for a new object at dfd/name: remove what is there. */
static int replace(struct ovl_apply *a, int dfd, const char *name)
{
	struct stat st;

	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	pcache_flush(a, dfd);
	return remove_at(dfd, name);
}

/* --- entries --------------------------------------------------------------- */

static int do_file(struct ovl_apply *a, int dfd, const char *name, const struct ovl_tar_member *e)
{
	bool exact = mode_exact(a, e->mode);
	mode_t cmode = exact ? e->mode & 0777 : 0600;
	int fd;

	for (int tries = 0;; tries++) {
		fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, cmode);
		if (fd >= 0 || errno != EEXIST || tries)
			break;
		int err = replace(a, dfd, name);
		if (err)
			return err;
	}
	if (fd < 0)
		return -errno;
	a->fd = fd;
	a->seq = !e->is_sparse;
	a->st.files++;
	return 0;
}

static int finish_file(struct ovl_apply *a)
{
	const struct ovl_tar_member *e = a->e;
	struct timespec ts[2];
	int err = 0, fd = a->fd;

	a->fd = -1;
	if (e->is_sparse && ftruncate(fd, (off_t)e->size) < 0)
		err = -errno;
	if (!err)
		err = meta_fd(a, fd, e, !mode_exact(a, e->mode));
	entry_times(e, ts);
	if (!err && futimens(fd, ts) < 0)
		err = -errno;
	if (close(fd) < 0 && !err)
		err = -errno;
	return err;
}

static int add_dir_time(struct ovl_apply *a, const char *path, size_t len, ino_t ino,
			const struct ovl_tar_member *e)
{
	struct dir_time *d;

	if (a->ndirs == a->capdirs) {
		size_t n = a->capdirs ? a->capdirs * 2 : 256;
		struct dir_time *nd = realloc(a->dirs, n * sizeof(*nd));

		if (!nd)
			return -ENOMEM;
		a->dirs = nd;
		a->capdirs = n;
	}
	d = &a->dirs[a->ndirs];
	d->path = strndup(path, len);
	if (!d->path)
		return -ENOMEM;
	d->ino = ino;
	entry_times(e, d->ts);
	a->ndirs++;
	return 0;
}

static int do_dir(struct ovl_apply *a, int dfd, const char *name, const struct ovl_tar_member *e)
{
	bool exact = mode_exact(a, e->mode) && !a->psetgid;
	struct stat st;
	int fd, err;

	if (mkdirat(dfd, name, exact ? e->mode & 0777 : 0700) < 0) {
		if (errno != EEXIST)
			return -errno;
		exact = false;
		if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
		if (a->mode == OVL_APPLY_LAYER && is_wh_stat(a, dfd, name, &st)) {
			err = whiteout_to_dir(a, dfd, name, 0700);
		} else if (!S_ISDIR(st.st_mode)) {
			err = remove_at(dfd, name);
			if (!err && mkdirat(dfd, name, 0700) < 0)
				err = -errno;
		} else {
			err = 0;	/* merge */
		}
		if (err)
			return err;
	}
	a->st.dirs++;
	if (exact && !need_chown(a, e) && !e->nxattrs)
		return add_dir_time(a, a->path, a->plen, 0, e);	/* mkdir made it all */
	fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	err = meta_fd(a, fd, e, !exact);
	if (!err && fstat(fd, &st) < 0)
		err = -errno;
	close(fd);
	return err ? err : add_dir_time(a, a->path, a->plen, st.st_ino, e);
}

/* Owner, xattrs and times of a non-file dfd/name, never followed; mode
 * too unless a symlink. */
static int meta_at(struct ovl_apply *a, int dfd, const char *name, const struct ovl_tar_member *e,
		   bool is_link)
{
	struct timespec ts[2];
	int err;

	if (need_chown(a, e) &&
	    fchownat(dfd, name, (uid_t)e->uid, (gid_t)e->gid, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (!is_link) {
		err = chmod_nofollow(dfd, name, e->mode & 07777);
		if (err)
			return err;
	}
	for (size_t i = 0; i < e->nxattrs; i++) {
		err = set_one_xattr(-1, dfd, name, e->xattrs[i].name, e->xattrs[i].value,
				    e->xattrs[i].len);
		if (err)
			return err;
	}
	entry_times(e, ts);
	return utimensat(dfd, name, ts, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
}

static int do_symlink(struct ovl_apply *a, int dfd, const char *name, const struct ovl_tar_member *e)
{
	if (memchr(e->linkname, 0, e->linklen))
		return set_error(a, OVL_APPLY_E_CORRUPT, -EINVAL);
	for (int tries = 0;; tries++) {
		if (symlinkat(e->linkname, dfd, name) == 0)
			break;
		if (errno != EEXIST || tries)
			return -errno;
		int err = replace(a, dfd, name);
		if (err)
			return err;
	}
	a->st.symlinks++;
	return meta_at(a, dfd, name, e, true);
}

static int do_node(struct ovl_apply *a, int dfd, const char *name, const struct ovl_tar_member *e)
{
	mode_t type = e->type == '3' ? S_IFCHR : e->type == '4' ? S_IFBLK : S_IFIFO;
	dev_t dev = 0;

	if (type != S_IFIFO) {
		if (e->devmajor > 0xffffffffu || e->devminor > 0xffffffffu)
			return set_error(a, OVL_APPLY_E_CORRUPT, -ERANGE);
		dev = makedev((unsigned)e->devmajor, (unsigned)e->devminor);
		if (ovl_is_whiteout_dev(type, dev))
			return set_error(a, OVL_APPLY_E_WHITEOUT, -EINVAL);
		if (!(a->flags & OVL_APPLY_DEVICES)) {
			a->st.skipped++;
			return 0;
		}
	}
	for (int tries = 0;; tries++) {
		if (mknodat(dfd, name, type | 0600, dev) == 0)
			break;
		if (errno != EEXIST || tries)
			return -errno;
		int err = replace(a, dfd, name);
		if (err)
			return err;
	}
	if (type == S_IFIFO)
		a->st.fifos++;
	else
		a->st.devices++;
	return meta_at(a, dfd, name, e, false);
}

/* Copy the lower file at upath up into the layer at the same path. */
static int copy_up_lower(struct ovl_apply *a, const char *upath, size_t ulen)
{
	struct ovl_info info;
	struct timespec ts[2];
	const char *base;
	size_t dl;
	char *names = NULL;
	long n;
	int in = -1, out = -1, dfd, err;

	err = ovl_lookup(a->lowers, upath, 0, &info);
	if (err)
		return err;
	base = base_of(upath, ulen, &dl);
	dfd = open_parent(a, upath, dl, true);
	if (dfd < 0)
		return dfd;
	if (S_ISLNK(info.st.st_mode)) {
		char target[PATH_MAX];
		long tl = ovl_readlink(a->lowers, upath, target, sizeof(target) - 1);

		if (tl < 0)
			return (int)tl;
		target[tl] = 0;
		if (symlinkat(target, dfd, base) < 0)
			return -errno;
		if (fchownat(dfd, base, info.st.st_uid, info.st.st_gid, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
		ts[0] = info.st.st_atim;
		ts[1] = info.st.st_mtim;
		err = utimensat(dfd, base, ts, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
		goto done;
	}
	if (!S_ISREG(info.st.st_mode))
		return -ENOENT;
	in = ovl_open(a->lowers, upath, O_RDONLY | O_NOFOLLOW);
	if (in < 0)
		return in;
	out = openat(dfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (out < 0) {
		err = -errno;
		goto out;
	}
	err = ovl_copy_data(in, out, info.st.st_size, OVL_COPY_SPARSE | OVL_COPY_SET_SIZE);
	if (err > 0)
		err = 0;
	if (!err && fchown(out, info.st.st_uid, info.st.st_gid) < 0)
		err = -errno;
	if (!err && fchmod(out, info.st.st_mode & 07777) < 0)
		err = -errno;
	n = err ? 0 : ovl_listxattr(a->lowers, upath, 0, NULL, 0);
	if (n > 0) {
		names = malloc((size_t)n);
		n = names ? ovl_listxattr(a->lowers, upath, 0, names, (size_t)n) : -ENOMEM;
		for (char *p = names; n > 0 && !err && p < names + n; p += strlen(p) + 1) {
			char v[4096];
			long vl = ovl_getxattr(a->lowers, upath, 0, p, v, sizeof(v));

			if (vl >= 0)
				err = set_one_xattr(out, -1, NULL, p, v, (size_t)vl);
		}
		if (n < 0)
			err = (int)n;
	}
	ts[0] = info.st.st_atim;
	ts[1] = info.st.st_mtim;
	if (!err && futimens(out, ts) < 0)
		err = -errno;
done:
	if (!err)
		a->st.copied_up++;
out:
	free(names);
	if (out >= 0)
		close(out);
	if (in >= 0)
		close(in);
	return err;
}

static int do_hardlink(struct ovl_apply *a, int dfd, const char *name,
		       const struct ovl_tar_member *e)
{
	char target[PATH_MAX];
	size_t tlen, tdl;
	const char *tbase;
	struct stat st;
	int tfd, err;
	bool copied = false;

	err = clean_name(e->linkname, e->linklen, target, &tlen);
	if (err || !tlen)
		return name_error(a, err ? err : -EINVAL);
	if (tlen == a->plen && !memcmp(target, a->path, tlen))
		return 0;	/* a link to itself: nothing to do (GNU tar) */
	tbase = base_of(target, tlen, &tdl);
again:
	{
		char tparent[PATH_MAX];

		memcpy(tparent, target, tdl);
		tparent[tdl] = 0;
		tfd = tdl ? open_in_root(a, tparent, O_PATH | O_DIRECTORY) : a->root;
	}
	if (tfd >= 0 && fstatat(tfd, tbase, &st, AT_SYMLINK_NOFOLLOW) < 0)
		err = -errno;
	else if (tfd >= 0 && a->mode == OVL_APPLY_LAYER && is_wh_stat(a, tfd, tbase, &st))
		err = -ENOENT;	/* deleted by this layer */
	else
		err = tfd < 0 ? tfd : 0;
	if (err == -ENOENT && a->lowers && !copied && a->mode == OVL_APPLY_LAYER) {
		if (tfd >= 0 && tfd != a->root)
			close(tfd);
		tfd = -1;
		err = copy_up_lower(a, target, tlen);
		if (err)
			return a->cls ? err : io(a, err);
		copied = true;
		/* the copy-up used the parent cache: open ours again */
		base_of(a->path, a->plen, &tdl);
		dfd = open_parent(a, a->path, tdl, true);
		if (dfd < 0)
			return dfd;
		tbase = base_of(target, tlen, &tdl);
		goto again;
	}
	if (!err && S_ISDIR(st.st_mode))
		err = -EPERM;
	for (int tries = 0; !err; tries++) {
		if (linkat(tfd, tbase, dfd, name, 0) == 0)
			break;
		err = -errno;
		if (err != -EEXIST || tries)
			break;
		err = replace(a, dfd, name);
	}
	if (tfd >= 0 && tfd != a->root)
		close(tfd);
	if (!err)
		a->st.hardlinks++;
	return err;
}

/* ".wh..wh..opq" in the directory dfd (union path dir). */
static int do_opaque(struct ovl_apply *a, int dfd, const char *dir, size_t dlen)
{
	a->st.opaques++;
	if (a->mode == OVL_APPLY_LAYER) {
		if (!dlen) {
			if (!a->lowers)
				return set_error(a, OVL_APPLY_E_WHITEOUT, -EINVAL);
			a->root_opaque = true;
			return 0;
		}
		return xattr_set_at(dfd, "", a->x_opaque, "y", 1);
	}
	/* rootfs: delete every child this layer did not make */
	{
		int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		DIR *d;
		struct dirent *de;
		char child[PATH_MAX];
		int err = 0;

		if (fd < 0)
			return -errno;
		d = fdopendir(fd);
		if (!d) {
			close(fd);
			return -errno;
		}
		pcache_flush(a, dfd);
		while (!err && (de = readdir(d))) {
			size_t nl = strlen(de->d_name), cl;

			if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
				continue;
			if (dlen + nl + 2 > sizeof(child))
				continue;
			cl = 0;
			if (dlen) {
				memcpy(child, dir, dlen);
				child[dlen] = '/';
				cl = dlen + 1;
			}
			memcpy(child + cl, de->d_name, nl + 1);
			if (pathset_has(&a->made, child, cl + nl))
				continue;
			err = remove_at(dirfd(d), de->d_name);
		}
		closedir(d);
		return err;
	}
}

/* Make dfd/name a whiteout in the layer's form. */
static int make_whiteout(struct ovl_apply *a, int dfd, const char *name, bool root)
{
	int fd, err;

	if (!(a->flags & OVL_APPLY_XATTR_WHITEOUTS))
		return ovl_mknod_whiteout(dfd, name);
	fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	err = fsetxattr(fd, a->x_whiteout, "y", 1, 0) < 0 ? -errno : 0;
	close(fd);
	if (err)
		return err;
	if (root) {
		a->root_xmark = true;
		return 0;
	}
	{
		char v[2], proc[64];
		ssize_t r;

		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", dfd);
		r = getxattr(proc, a->x_opaque, v, sizeof(v));
		if (r == 1 && v[0] == 'y')
			return 0;
	}
	return xattr_set_at(dfd, "", a->x_opaque, "x", 1);
}

static int do_whiteout(struct ovl_apply *a, const char *hidden, size_t hlen,
		       const struct ovl_tar_member *e)
{
	char path[PATH_MAX];
	size_t dl, plen;
	int dfd, err;
	struct stat st;

	if (!hlen || (hlen == 1 && hidden[0] == '.') ||
	    (hlen == 2 && hidden[0] == '.' && hidden[1] == '.') ||
	    ovl_oci_is_marker(hidden, hlen))
		return set_error(a, OVL_APPLY_E_WHITEOUT, -EINVAL);
	base_of(a->path, a->plen, &dl);
	dfd = open_parent(a, a->path, dl, a->mode == OVL_APPLY_LAYER);
	if (dfd == -ENOENT || dfd == -ENOTDIR)
		return a->cls ? dfd : 0;	/* rootfs: nothing there to delete */
	if (dfd < 0)
		return dfd;
	plen = dl ? dl + 1 : 0;
	memcpy(path, a->path, plen);
	memcpy(path + plen, hidden, hlen);
	plen += hlen;
	path[plen] = 0;
	a->st.whiteouts++;
	if (pathset_has(&a->made, path, plen))
		return 0;	/* made by this layer: a whiteout hides only what is below */
	if (a->mode == OVL_APPLY_ROOTFS) {
		err = replace(a, dfd, path + (plen - hlen));
		return err;
	}
	if (fstatat(dfd, path + (plen - hlen), &st, AT_SYMLINK_NOFOLLOW) == 0) {
		if (is_wh_stat(a, dfd, path + (plen - hlen), &st))
			return 0;
		err = replace(a, dfd, path + (plen - hlen));
		if (err)
			return err;
	}
	err = make_whiteout(a, dfd, path + (plen - hlen), !dl);
	if (!err && (a->flags & OVL_APPLY_SAME_OWNER) && (e->uid || e->gid))
		err = fchownat(dfd, path + (plen - hlen), (uid_t)e->uid, (gid_t)e->gid,
			       AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
	return err;
}

static int on_entry(void *ctx, const struct ovl_tar_member *e)
{
	struct ovl_apply *a = ctx;
	const char *base;
	size_t dl;
	int dfd, err;

	a->e = e;
	a->st.entries++;
	if (a->flags & OVL_APPLY_TAR_SPLIT) {
		err = split_raw(a, e->raw, e->rawlen);
		if (err)
			return io(a, err);
	}
	err = clean_name(e->name, e->namelen, a->path, &a->plen);
	if (err)
		return name_error(a, err);
	if (!a->plen) {
		if (e->type == '5')
			return 0;	/* "./": the root's metadata is not the layer's */
		return name_error(a, -EINVAL);
	}
	err = check_ids(a, e);
	if (err)
		return err;
	base = base_of(a->path, a->plen, &dl);
	if (ovl_oci_is_marker(base, a->plen - (size_t)(base - a->path))) {
		if (ovl_oci_is_opaque_marker(base)) {
			dfd = open_parent(a, a->path, dl, a->mode == OVL_APPLY_LAYER);
			if (dfd == -ENOENT || dfd == -ENOTDIR)
				return a->cls ? dfd : 0;
			if (dfd < 0)
				return dfd;
			err = do_opaque(a, dfd, a->path, dl);
		} else {
			err = do_whiteout(a, base + 4, a->plen - (size_t)(base - a->path) - 4, e);
		}
		return a->cls ? a->err : io(a, err);
	}
	if (e->type == '5' || e->type == '0' || e->type == '2' || e->type == '1' ||
	    e->type == '3' || e->type == '4' || e->type == '6') {
		dfd = open_parent(a, a->path, dl, true);
		if (dfd < 0)
			return dfd;
	} else {
		return set_error(a, OVL_APPLY_E_CORRUPT, -EINVAL);
	}
	switch (e->type) {
	case '0': err = do_file(a, dfd, base, e); break;
	case '5': err = do_dir(a, dfd, base, e); break;
	case '2': err = do_symlink(a, dfd, base, e); break;
	case '1': err = do_hardlink(a, dfd, base, e); break;
	default: err = do_node(a, dfd, base, e); break;
	}
	if (!err)
		err = note_made(a, a->path, a->plen);
	if (err)
		return a->cls ? a->err : io(a, err);
	if ((a->flags & OVL_APPLY_TAR_SPLIT) && e->type == '0' && a->fd >= 0 && e->data_size) {
		uint8_t t = SPLIT_DATA;
		uint16_t pl = (uint16_t)a->plen;
		uint8_t plb[2] = { (uint8_t)pl, (uint8_t)(pl >> 8) };

		a->zero_at = SIZE_MAX;
		err = split_put(a, &t, 1);
		if (!err)
			err = split_put(a, plb, 2);
		if (!err)
			err = split_put(a, a->path, a->plen);
		if (!err)
			err = split_u64(a, e->is_sparse ? e->nsparse : 1);
		for (size_t i = 0; !err && i < (e->is_sparse ? e->nsparse : 1); i++) {
			err = split_u64(a, e->is_sparse ? e->sparse[i].off : 0);
			if (!err)
				err = split_u64(a, e->is_sparse ? e->sparse[i].len : e->data_size);
		}
		if (err)
			return io(a, err);
	}
	return 0;
}

static int on_data(void *ctx, const void *buf, size_t len, uint64_t off)
{
	struct ovl_apply *a = ctx;
	const char *p = buf;

	if (a->fd < 0) {
		/* data not kept in the tree (a whiteout's): tar-split keeps it */
		if (a->flags & OVL_APPLY_TAR_SPLIT) {
			int err = split_raw(a, buf, len);

			return err ? io(a, err) : 0;
		}
		return 0;
	}
	while (len) {
		ssize_t w = a->seq ? write(a->fd, p, len) : pwrite(a->fd, p, len, (off_t)off);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return io(a, -errno);
		}
		p += w;
		len -= (size_t)w;
		off += (uint64_t)w;
		a->st.data_bytes += (uint64_t)w;
	}
	return 0;
}

static int on_entry_end(void *ctx)
{
	struct ovl_apply *a = ctx;
	int err = 0;

	if (a->fd >= 0)
		err = finish_file(a);
	if (err)
		return io(a, err);
	a->e = NULL;
	return 0;
}

static int on_raw(void *ctx, int kind, const void *buf, size_t len)
{
	struct ovl_apply *a = ctx;
	int err;

	(void)kind;
	if (!(a->flags & OVL_APPLY_TAR_SPLIT))
		return 0;
	err = all_zero(buf, len) ? split_zero(a, len) : split_raw(a, buf, len);
	return err ? io(a, err) : 0;
}

static const struct ovl_tar_ops apply_ops = {
	.entry = on_entry,
	.data = on_data,
	.entry_end = on_entry_end,
	.raw = on_raw,
};

/* --- the end --------------------------------------------------------------- */

/* Emulate an opaque layer root: whiteouts for every name the lowers show
 * at the root that this layer did not make; a directory this layer has
 * there becomes opaque, so the lower one's contents stay hidden. */
static int root_opaque(struct ovl_apply *a)
{
	struct ovl_dirlist *list;
	int err = ovl_listdir(a->lowers, "", 0, &list);

	if (err)
		return err;
	for (size_t i = 0; !err && i < list->n; i++) {
		const char *name = list->ents[i].name;
		struct stat st;

		if (fstatat(a->root, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			err = errno == ENOENT ? make_whiteout(a, a->root, name, true) : -errno;
			if (!err)
				a->st.whiteouts++;
		} else if (S_ISDIR(st.st_mode)) {
			err = xattr_set_at(a->root, name, a->x_opaque, "y", 1);
		}
	}
	ovl_dirlist_free(list);
	return err;
}

static int set_dir_times(struct ovl_apply *a)
{
	for (size_t i = 0; i < a->ndirs; i++) {
		struct dir_time *d = &a->dirs[i];
		size_t len = strlen(d->path), dl;
		const char *base = base_of(d->path, len, &dl);
		struct stat st;
		int dfd = open_parent(a, d->path, dl, false);

		if (dfd < 0)
			continue;	/* gone since (replaced, whited out) */
		if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode) ||
		    (d->ino && st.st_ino != d->ino))
			continue;
		if (utimensat(dfd, base, d->ts, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
	}
	return 0;
}

int ovl_apply_begin(const struct ovl_apply_config *cfg, struct ovl_apply **out)
{
	struct ovl_apply *a;
	const char *ns = cfg->xattr_ns == OVL_XATTR_USER ? "user" : "trusted";
	int err = 0;
	mode_t um;

	if ((cfg->mode != OVL_APPLY_LAYER && cfg->mode != OVL_APPLY_ROOTFS) || !cfg->dest ||
	    (cfg->mode == OVL_APPLY_ROOTFS && cfg->nlowers))
		return -EINVAL;
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->mode = cfg->mode;
	a->flags = cfg->flags;
	a->max_size = cfg->max_size;
	a->parent_fd = a->root = a->fd = -1;
	a->zero_at = SIZE_MAX;
	a->euid = geteuid();
	a->egid = getegid();
	um = umask(022);
	umask(um);
	a->umask = um;
	snprintf(a->x_opaque, sizeof(a->x_opaque), "%s.overlay.opaque", ns);
	snprintf(a->x_whiteout, sizeof(a->x_whiteout), "%s.overlay.whiteout", ns);

	if (cfg->nlowers) {
		struct ovl_config sc = {
			.lowers = cfg->lowers, .nlowers = cfg->nlowers,
			.xattr_ns = cfg->xattr_ns, .whiteouts = OVL_WHITEOUT_KERNEL,
		};

		err = ovl_stack_open(&sc, &a->lowers, NULL);
		if (err)
			goto fail;
	}
	if (a->mode == OVL_APPLY_ROOTFS) {
		a->root = open(cfg->dest, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (a->root < 0) {
			err = -errno;
			goto fail;
		}
	} else {
		char *d = strdup(cfg->dest), *slash;
		struct stat st;

		if (!d) {
			err = -ENOMEM;
			goto fail;
		}
		while (strlen(d) > 1 && d[strlen(d) - 1] == '/')
			d[strlen(d) - 1] = 0;
		slash = strrchr(d, '/');
		if (slash) {
			*slash = 0;
			a->parent_fd = open(slash == d ? "/" : d, O_PATH | O_DIRECTORY | O_CLOEXEC);
			a->dest_name = strdup(slash + 1);
		} else {
			a->parent_fd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
			a->dest_name = strdup(d);
		}
		free(d);
		if (a->parent_fd < 0) {
			err = -errno;
			goto fail;
		}
		if (!a->dest_name || !*a->dest_name || !strcmp(a->dest_name, ".") ||
		    !strcmp(a->dest_name, "..")) {
			err = a->dest_name ? -EINVAL : -ENOMEM;
			goto fail;
		}
		if (fstatat(a->parent_fd, a->dest_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
			err = -EEXIST;
			goto fail;
		}
		snprintf(a->tmp, sizeof(a->tmp), ".%.20s.apply-%d-%lx", a->dest_name, (int)getpid(),
			 (unsigned long)(uintptr_t)a & 0xffffff);
		if (mkdirat(a->parent_fd, a->tmp, 0700) < 0) {
			err = -errno;
			goto fail;
		}
		a->tmp_made = true;
		a->root = openat(a->parent_fd, a->tmp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (a->root < 0) {
			err = -errno;
			goto fail;
		}
	}
	err = ovl_tar_new(&apply_ops, a, a->flags & OVL_APPLY_TAR_SPLIT, &a->tar);
	if (err)
		goto fail;
	if (a->flags & OVL_APPLY_TAR_SPLIT) {
		err = split_put(a, SPLIT_MAGIC, 8);
		if (err)
			goto fail;
	}
	*out = a;
	return 0;
fail:
	ovl_apply_free(a);
	return err;
}

static int tar_error(struct ovl_apply *a, int err)
{
	if (a->cls)
		return a->err;
	if (err == -EBADMSG)
		return set_error(a, OVL_APPLY_E_CORRUPT, err);
	if (err == -ENODATA)
		return set_error(a, OVL_APPLY_E_TRUNCATED, err);
	if (err == -E2BIG)
		return set_error(a, OVL_APPLY_E_TOO_LARGE, err);
	return set_error(a, OVL_APPLY_E_IO, err);
}

int ovl_apply_feed(struct ovl_apply *a, const void *buf, size_t len)
{
	int err;

	if (a->failed || a->published)
		return a->cls ? a->err : -EINVAL;
	if (a->max_size && (a->st.bytes + len > a->max_size || a->st.bytes + len < a->st.bytes)) {
		a->e = ovl_tar_current(a->tar);
		a->failed = true;
		return set_error(a, OVL_APPLY_E_TOO_LARGE, -EFBIG);
	}
	err = ovl_tar_feed(a->tar, buf, len);
	if (err) {
		if (!a->e)
			a->e = ovl_tar_current(a->tar);
		a->failed = true;
		return tar_error(a, err);
	}
	a->st.bytes += len;
	return 0;
}

int ovl_apply_end(struct ovl_apply *a, struct ovl_apply_stats *stats)
{
	int err;

	if (a->failed || a->published)
		return a->cls ? a->err : -EINVAL;
	err = ovl_tar_finish(a->tar);
	if (err) {
		a->e = ovl_tar_current(a->tar);
		a->failed = true;
		return tar_error(a, err);
	}
	a->e = NULL;
	if (a->root_opaque)
		err = root_opaque(a);
	if (!err && a->root_xmark)
		err = xattr_set_at(a->root, "", a->x_opaque, "x", 1);
	if (!err)
		err = set_dir_times(a);
	if (!err && a->mode == OVL_APPLY_LAYER)
		err = chmod_nofollow(a->parent_fd, a->tmp, 0755);	/* dockerd's diff dirs */
	if (!err && !(a->flags & OVL_APPLY_NO_SYNC)) {
		int fd = openat(a->root, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

		if (fd < 0 || syncfs(fd) < 0)
			err = -errno;
		if (fd >= 0)
			close(fd);
	}
	if (!err && a->mode == OVL_APPLY_LAYER) {
		err = ovl_renameat2(a->parent_fd, a->tmp, a->parent_fd, a->dest_name,
				    RENAME_NOREPLACE);
		if (!err)
			a->tmp_made = false;
	}
	if (err) {
		a->failed = true;
		return a->cls ? a->err : io(a, err);
	}
	a->published = true;
	if (stats)
		*stats = a->st;
	return 0;
}

int ovl_apply_error(const struct ovl_apply *a, const char **entry, size_t *len, int *err)
{
	if (entry)
		*entry = a->ename;
	if (len)
		*len = a->enamelen;
	if (err)
		*err = a->err;
	return a->cls;
}

size_t ovl_apply_split(struct ovl_apply *a, const void **buf)
{
	size_t n = a->split_len;

	*buf = a->split;
	/* The caller has until the next call: keep the bytes, start over. */
	a->split_len = 0;
	a->zero_at = SIZE_MAX;
	return n;
}

void ovl_apply_free(struct ovl_apply *a)
{
	if (!a)
		return;
	if (a->fd >= 0)
		close(a->fd);
	pcache_flush(a, -1);
	if (a->root >= 0)
		close(a->root);
	if (a->tmp_made)
		remove_at(a->parent_fd, a->tmp);
	if (a->parent_fd >= 0)
		close(a->parent_fd);
	if (a->lowers)
		ovl_stack_close(a->lowers);
	ovl_tar_free(a->tar);
	for (size_t i = 0; i < a->ndirs; i++)
		free(a->dirs[i].path);
	free(a->dirs);
	pathset_free(&a->made);
	free(a->ename);
	free(a->split);
	free(a->dest_name);
	free(a);
}
