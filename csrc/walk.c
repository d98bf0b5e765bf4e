/* walk.c - path walk, and the stack's lock around every operation.
 *
 * A path is resolved one component at a time in the merged index of the
 * directory reached so far (readdir.c, namei.c); '..' moves to the parent
 * directory node and never above the root; symlinks are read from the
 * layer that supplies them and followed inside the union root (absolute
 * targets start again at the union root), as openat2(RESOLVE_IN_ROOT)
 * would.
 *
 * Every operation runs its walk here, with the stack's lock: ovl_run for
 * reading (the read lock first, the write lock when a layer must be read),
 * ovl_change_begin/end around a change (copy_up.c and the files above it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ovl_internal.h"

/* Search permission on a directory, as every step of a path walk needs. */
int ovl_may_search(const struct ovl_cred *c, const struct ovl_dir *d)
{
	struct stat st;

	ovl_fill_stat(d->fill, &st);
	return ovl_permission(c, &st, OVL_MAY_EXEC);
}

int ovl_walk_path(struct ovl_walk *w, const char *path, unsigned flags)
{
	struct ovl_stack *s = w->s;
	struct ovl_dir *dir = NULL, *d;
	struct ovl_ent *ent = s->root_ent, *e;
	const char *p = path;
	char *buf = NULL;
	int nlinks = 0, err = 0;

	if (ovl_path_too_long(path))
		return -ENAMETOOLONG;
	for (;;) {
		const char *c, *q, *rest;
		size_t len;
		bool last, slash_after;

		while (*p == '/')
			p++;
		if (!*p)
			break;
		c = p;
		q = strchrnul(c, '/');
		len = (size_t)(q - c);
		for (rest = q; *rest == '/'; rest++)
			;
		last = !*rest;
		slash_after = *q == '/';
		err = ovl_ent_dir(w, dir, ent, &d);
		if (!err && w->cred)
			err = ovl_may_search(w->cred, d);	/* namei.c:may_lookup */
		if (err)
			goto out;
		p = rest;
		if (len == 1 && c[0] == '.')
			continue;
		if (len == 2 && c[0] == '.' && c[1] == '.') {
			struct ovl_dir *up = d->parent ? d->parent : d;

			ent = up->ent;
			dir = up->parent;
			continue;
		}
		if (len > OVL_NAME_MAX) {
			err = -ENAMETOOLONG;
			goto out;
		}
		e = ovl_dir_find(d, c, len, ovl_name_hash(c, len));
		if (!e || (e->flags & OVL_E_WHITEOUT)) {
			err = -ENOENT;
			goto out;
		}
		if (e->dtype != DT_DIR && !(e->flags & OVL_E_FILLED)) {
			/* Its metadata says whether it is an xattr whiteout, a
			 * metacopy, or a symlink's target. */
			if (w->cached_only) {
				err = -EAGAIN;
				goto out;
			}
			err = ovl_resolve_ent(w, d, e);
			if (err)
				goto out;
		}
		if (e->dtype == DT_LNK && (!last || slash_after || (flags & OVL_LOOKUP_FOLLOW))) {
			const char *target = ovl_ent_target(e);
			size_t tlen = strlen(target), qlen = strlen(q);
			char *nb;

			if (++nlinks > OVL_MAX_SYMLINKS) {
				err = -ELOOP;
				goto out;
			}
			if (!tlen) {
				err = -ENOENT;
				goto out;
			}
			/* Continue with the target followed by what was left
			 * (keeping a trailing slash). */
			nb = malloc(tlen + qlen + 1);
			if (!nb) {
				err = -ENOMEM;
				goto out;
			}
			memcpy(nb, target, tlen);
			memcpy(nb + tlen, q, qlen + 1);
			free(buf);
			buf = nb;
			p = buf;
			if (target[0] == '/') {
				ent = s->root_ent;
				dir = NULL;
			} else {
				ent = d->ent;
				dir = d->parent;
			}
			continue;
		}
		ent = e;
		dir = d;
		if (last && slash_after && e->dtype != DT_DIR) {
			err = -ENOTDIR;
			goto out;
		}
	}
out:
	free(buf);
	w->dir = dir;
	w->ent = ent;
	return err;
}

/* Switch to the opener's credentials to read the layers; a thread that
 * cannot (it dropped them for good) reads with its own. */
static int enter_for_reading(struct ovl_stack *s, struct ovl_cred *cred)
{
	int entered = ovl_cred_enter(s, cred);

	return entered < 0 ? 0 : entered;
}

/* Run fn on what path names.  A first attempt answers from the cache under
 * the read lock; if anything must be read from a layer, the walk runs again
 * under the write lock.  Layers are read with the opener's credentials
 * (cred.c): a thread whose differ switches for the slow path, or for the
 * whole call with OVL_RUN_CHECKED, where fn does I/O and the walk checks
 * the caller's search permission (fn finds the caller in w->cred). */
int ovl_run(struct ovl_stack *s, const char *path, unsigned flags,
	    ovl_op_fn fn, void *arg)
{
	struct ovl_walk w = { .s = s };
	struct ovl_cred cred;
	int err, locked, entered = 0;

	ovl_error_clear();	/* no detail outlives its call: one store */
	cred.groups = cred.inline_groups;
	cred.ngroups = 0;
	if ((flags & OVL_RUN_CHECKED) && ovl_cred_reads_as_opener(s)) {
		w.cred = &s->mounter;	/* checks that pass as they would for it */
	} else if (flags & OVL_RUN_CHECKED) {
		err = ovl_cred_current(&cred);
		if (err)
			goto out;
		entered = enter_for_reading(s, &cred);
		w.cred = &cred;
	}
	if (!(s->cfg & OVL_CFG_NO_CACHE)) {
		locked = (flags & OVL_LOOKUP_CACHED) ?
			 pthread_rwlock_tryrdlock(&s->lock) :
			 pthread_rwlock_rdlock(&s->lock);
		if (locked == 0) {
			w.cached_only = true;
			err = ovl_walk_path(&w, path, flags);
			if (!err)
				err = fn(&w, arg);
			pthread_rwlock_unlock(&s->lock);
			if (err != -EAGAIN) {
				ovl_atomic_inc(&s->hits);
				goto out;
			}
		}
		if (flags & OVL_LOOKUP_CACHED) {
			err = -EAGAIN;
			goto out;
		}
	}
	if (!(flags & OVL_RUN_CHECKED) && !ovl_cred_reads_as_opener(s)) {
		err = ovl_cred_current(&cred);
		if (err)
			goto out;
		entered = enter_for_reading(s, &cred);
	}
	pthread_rwlock_wrlock(&s->lock);
	w.cached_only = false;
	err = ovl_walk_path(&w, path, flags);
	if (!err)
		err = fn(&w, arg);
	ovl_cache_flush_if_over(s);
	pthread_rwlock_unlock(&s->lock);
	ovl_atomic_inc(&s->misses);
out:
	if (entered > 0)
		ovl_cred_leave(s, &cred);
	ovl_cred_release(&cred);
	return err;
}

int ovl_change_begin(struct ovl_stack *s, struct ovl_change *c)
{
	int err;

	ovl_error_clear();
	if (s->work_fd < 0)
		return -EROFS;
	c->s = s;
	err = ovl_cred_current(&c->cred);
	if (err)
		return err;
	c->entered = ovl_cred_enter(s, &c->cred);	/* per-thread */
	if (c->entered < 0) {
		err = c->entered;
		ovl_cred_release(&c->cred);
		return err;
	}
	pthread_rwlock_wrlock(&s->lock);
	return 0;
}

int ovl_change_end(struct ovl_change *c, int err)
{
	ovl_cache_flush_if_over(c->s);
	pthread_rwlock_unlock(&c->s->lock);
	if (c->entered)
		ovl_cred_leave(c->s, &c->cred);
	ovl_cred_release(&c->cred);
	ovl_atomic_inc(&c->s->misses);
	return err;
}

/* Forget the directory whose index answered for path: on success the one
 * holding the last name, on failure the one where the walk stopped (its
 * index may be missing a name added since). */
int ovl_invalidate(struct ovl_stack *s, const char *path)
{
	struct ovl_walk w = { .s = s, .cached_only = true };
	struct ovl_dir *drop = NULL;
	bool all = path == NULL;
	int err;

	pthread_rwlock_wrlock(&s->lock);
	if (!all) {
		/* Only what is cached can be stale: never read to invalidate. */
		err = ovl_walk_path(&w, path, 0);
		if (!err)
			drop = w.dir;
		else if (w.ent->dtype == DT_DIR && w.ent->ext)
			drop = w.ent->ext;
		else
			drop = w.dir;
		all = drop == NULL || drop == s->root;
	}
	if (all)
		ovl_cache_flush(s);
	else
		ovl_cache_drop_dir(s, drop);
	pthread_rwlock_unlock(&s->lock);
	return 0;
}
