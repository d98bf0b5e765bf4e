/* target.c - what every change starts from (setattr.c, xattrs.c, dir.c,
 * file.c): the object a path names or the parent a new name goes in,
 * found as the caller, then made present in the upper layer; and what the
 * cache drops afterwards.
 *
 * Every change first checks the caller's rights on the merged objects, as
 * the VFS checks the overlay inode (fs/namei.c may_create, may_delete,
 * may_open; fs/attr.c setattr_prepare; fs/xattr.c xattr_permission), with
 * cred.c's helpers, in the kernel's errno order; the work then runs with
 * the opener's credentials (ovl_change_begin).  Then it copies up the
 * parent chain.  After a change the directories whose indexes no longer
 * match are dropped from the cache.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ovl_internal.h"

/* Resolve the parent of path (symlinks followed) and look the last name
 * up in it without following it, checking search permission on the way
 * as cred.  Write lock held. */
int ovl_find_target(struct ovl_stack *s, const struct ovl_cred *cred, const char *path,
		    struct ovl_target *t)
{
	size_t n, end, start;
	char *parent;
	struct ovl_dir *d;
	int err;

	memset(t, 0, sizeof(*t));
	t->w.s = s;
	t->w.cred = cred;
	if (ovl_path_too_long(path))
		return -ENAMETOOLONG;
	n = strlen(path);
	end = n;
	while (end > 0 && path[end - 1] == '/')
		end--;
	t->slash = end < n;
	start = end;
	while (start > 0 && path[start - 1] != '/')
		start--;
	parent = strndup(path, start);
	if (!parent)
		return -ENOMEM;
	err = ovl_walk_path(&t->w, parent, OVL_LOOKUP_FOLLOW);
	free(parent);
	if (!err)
		err = ovl_ent_dir(&t->w, t->w.dir, t->w.ent, &d);
	if (err)
		return err;
	t->dir = d;
	if (end == start)
		return -EBUSY;	/* the root itself */
	err = ovl_may_search(cred, d);
	if (err)
		return err;
	/* The name's length matters only once the walk got there. */
	if (end - start > OVL_NAME_MAX)
		return -ENAMETOOLONG;
	memcpy(t->name, path + start, end - start);
	t->name[end - start] = '\0';
	t->len = end - start;
	if (!strcmp(t->name, ".") || !strcmp(t->name, "..")) {
		t->dot = true;
		return 0;
	}
	struct ovl_ent *e = ovl_dir_find(d, t->name, t->len, ovl_name_hash(t->name, t->len));

	if (!e || (e->flags & OVL_E_WHITEOUT))
		return 0;
	if (e->dtype == DT_DIR)
		err = ovl_ent_dir(&t->w, d, e, &t->node);
	else if (!(e->flags & OVL_E_FILLED))
		err = ovl_resolve_ent(&t->w, d, e);
	if (err == -ENOENT)
		return 0;	/* an xattr whiteout */
	if (err)
		return err;
	t->ent = e;
	return 0;
}

/* The overlay's attributes of the name the target found (t->ent). */
void ovl_target_attr(const struct ovl_target *t, struct stat *st)
{
	ovl_ent_attr(t->node, t->ent, st);
}

/* Does the upper non-directory udir/name have more than min names?  The
 * cache does not know where a hard link's other names are: a change seen
 * through all of them (attributes, link count) empties it instead. */
bool ovl_aliased(int udir, const char *name, nlink_t min)
{
	struct stat st;

	return fstatat(udir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISDIR(st.st_mode) &&
	       st.st_nlink > min;
}

/* Drop what a change made stale: the changed directory, or everything
 * when the changed file has other names. */
void ovl_drop_changed(struct ovl_stack *s, struct ovl_dir *changed, bool all)
{
	ovl_cache_drop_dir(s, changed);
	if (all)
		ovl_cache_flush(s);
}

/* Copy up what path names (a final symlink followed with
 * OVL_LOOKUP_FOLLOW), for a change made with the open(2) flags oflags (see
 * ovl_copy_up_ent), and open its upper directory: *udir and *name address
 * it there.  *t keeps the walk. */
int ovl_upper_object(struct ovl_stack *s, const char *path, unsigned flags, int oflags,
		     struct ovl_target *t, int *udir, const char **name)
{
	int method, err;

	memset(t, 0, sizeof(*t));
	t->w.s = s;	/* the caller's search permission is checked already */
	err = ovl_walk_path(&t->w, path, flags & OVL_LOOKUP_FOLLOW);
	if (err)
		return err;
	err = ovl_copy_up_ent(&t->w, t->w.dir, t->w.ent, oflags, &t->changed, &method);
	if (err)
		return err;
	if (!t->changed)
		t->changed = t->w.ent == s->root_ent ? s->root : t->w.dir;
	if (t->w.ent == s->root_ent) {
		*name = ".";
		*udir = ovl_layer_open(s, 0, "", O_RDONLY | O_DIRECTORY);
	} else {
		struct stat st;

		*name = t->w.ent->name;
		*udir = ovl_open_upper_dir(s, t->w.dir->path, &st);
	}
	return *udir < 0 ? *udir : 0;
}

/* Clear the set-id bits a change by the caller clears, which the work,
 * done with the opener's rights, did not. */
int ovl_kill_suid_fd(int fd, mode_t kill)
{
	struct stat st;

	if (!kill)
		return 0;
	if (fstat(fd, &st) < 0 || fchmod(fd, st.st_mode & 07777 & ~kill) < 0)
		return -errno;
	return 0;
}

/* Walk to what path names as the caller and read its attributes. */
int ovl_walk_object(struct ovl_stack *s, const struct ovl_cred *cred, const char *path,
		    unsigned flags, struct ovl_walk *w, struct stat *st)
{
	struct ovl_dir *node = NULL;
	int err;

	memset(w, 0, sizeof(*w));
	w->s = s;
	w->cred = cred;
	err = ovl_walk_path(w, path, flags & OVL_LOOKUP_FOLLOW);
	if (!err && w->ent->dtype == DT_DIR)
		err = ovl_ent_dir(w, w->dir, w->ent, &node);
	if (!err)
		ovl_ent_attr(node, w->ent, st);
	return err;
}
