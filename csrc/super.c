/* super.c - a stack's life cycle (the kernel's super.c): checking the
 * configuration, opening every layer root once and refusing overlapping
 * layers as the kernel refuses to mount them, setting up the work dir,
 * probing the kernel's features, and closing it all again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "ovl_internal.h"

static int probe_features(struct ovl_stack *s)
{
	int fd, r;
	char c;

	fd = ovl_sys_openat2(s->layers[1].fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC,
			     OVL_RESOLVE);
	s->have_openat2 = fd >= 0;
	if (fd >= 0)
		close(fd);
	/* getxattrat/listxattrat (6.13+): any answer but ENOSYS/EPERM counts. */
	r = (int)ovl_sys_getxattrat(s->layers[1].fd, ".", AT_SYMLINK_NOFOLLOW,
				    "user.ovl-probe", &c, 1);
	s->have_xattrat = r != -ENOSYS && r != -EPERM && r != -EINVAL && r != -E2BIG;
	return 0;
}

/* Overlapping layers (super.c:ovl_setup_trap, ovl_check_overlapping_layers).
 * Every layer root is recorded with the directories above it, up to the
 * root of its filesystem or to a directory already recorded, so that after
 * opening one pass over the in-memory chains tells whether one root is, or
 * lies inside, another: each root costs one fstatat per new ancestor (two
 * for the layout /store/<id>/diff).  Chains cross bind mounts of the same
 * filesystem and stop where the filesystem changes, as the kernel's dentry
 * walk stops at its superblock's root. */
#define OVL_NO_LAYER INT32_MIN

struct ovl_anc_node {
	dev_t dev;
	ino_t ino;
	int parent;		/* node index, -1 at the top */
	int layer;		/* the layer whose root this is, or OVL_NO_LAYER */
};

struct ovl_anc {
	struct ovl_anc_node *n;
	int nn, cap;
	int *slot;		/* open addressing: node index + 1, 0 empty */
	int nslot;		/* a power of two, more than twice nn */
	int dup, dup_of;	/* the first root that is an earlier one, or OVL_NO_LAYER */
};

static uint32_t anc_hash(dev_t dev, ino_t ino)
{
	uint64_t h = ((uint64_t)ino ^ ((uint64_t)dev << 32 | (uint64_t)dev >> 32)) *
		     0x9E3779B97F4A7C15ull;

	return (uint32_t)(h >> 32);
}

static int anc_find(const struct ovl_anc *a, dev_t dev, ino_t ino)
{
	if (!a->nslot)
		return -1;
	for (uint32_t i = anc_hash(dev, ino) & (uint32_t)(a->nslot - 1);;
	     i = (i + 1) & (uint32_t)(a->nslot - 1)) {
		int k = a->slot[i] - 1;

		if (k < 0)
			return -1;
		if (a->n[k].dev == dev && a->n[k].ino == ino)
			return k;
	}
}

static int anc_add(struct ovl_anc *a, const struct stat *st)
{
	if (a->nn == a->cap) {
		int cap = a->cap ? a->cap * 2 : 64;
		struct ovl_anc_node *n = realloc(a->n, (size_t)cap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		a->n = n;
		a->cap = cap;
	}
	if (2 * (a->nn + 1) >= a->nslot) {
		int nslot = a->nslot ? a->nslot * 2 : 256;
		int *slot = calloc((size_t)nslot, sizeof(*slot));

		if (!slot)
			return -ENOMEM;
		free(a->slot);
		a->slot = slot;
		a->nslot = nslot;
		for (int k = 0; k < a->nn; k++) {
			uint32_t i = anc_hash(a->n[k].dev, a->n[k].ino) & (uint32_t)(nslot - 1);

			while (slot[i])
				i = (i + 1) & (uint32_t)(nslot - 1);
			slot[i] = k + 1;
		}
	}
	a->n[a->nn] = (struct ovl_anc_node){ st->st_dev, st->st_ino, -1, OVL_NO_LAYER };
	{
		uint32_t i = anc_hash(st->st_dev, st->st_ino) & (uint32_t)(a->nslot - 1);

		while (a->slot[i])
			i = (i + 1) & (uint32_t)(a->nslot - 1);
		a->slot[i] = a->nn + 1;
	}
	return a->nn++;
}

static void anc_free(struct ovl_anc *a)
{
	free(a->n);
	free(a->slot);
}

/* Record the root of layer (fd, an O_PATH directory on the host, not a
 * detached clone, whose ".." would be itself) and the directories above
 * it (root is its stat); the first root that is an earlier one is noted in
 * a->dup.  Return 0 or -errno. */
static int anc_root(struct ovl_anc *a, int fd, const struct stat *root, int layer)
{
	char up[PATH_MAX];
	struct stat st = *root;
	size_t n = 0;
	int k, child;

	k = anc_find(a, st.st_dev, st.st_ino);
	if (k >= 0) {
		if (a->n[k].layer != OVL_NO_LAYER) {
			if (a->dup == OVL_NO_LAYER) {
				a->dup = layer;
				a->dup_of = a->n[k].layer;
			}
			return 0;
		}
		a->n[k].layer = layer;	/* above an earlier root: its chain is known */
		return 0;
	}
	child = anc_add(a, &st);
	if (child < 0)
		return child;
	a->n[child].layer = layer;
	while (n + 3 < sizeof(up)) {
		memcpy(up + n, n ? "/.." : "..", n ? 4 : 3);
		n += n ? 3 : 2;
		if (fstatat(fd, up, &st, 0) < 0)
			return -errno;
		if (st.st_dev != a->n[child].dev ||
		    st.st_ino == a->n[child].ino)
			break;	/* another filesystem, or the top of this one */
		k = anc_find(a, st.st_dev, st.st_ino);
		if (k >= 0) {
			a->n[child].parent = k;
			break;
		}
		k = anc_add(a, &st);
		if (k < 0)
			return k;
		a->n[child].parent = k;
		child = k;
	}
	return 0;
}

/* The innermost layer root strictly above the root (dev, ino) — of a lower
 * or data layer only, with lowers_only — or OVL_NO_LAYER. */
static int anc_container(const struct ovl_anc *a, dev_t dev, ino_t ino, bool lowers_only)
{
	int k = anc_find(a, dev, ino);

	for (k = k >= 0 ? a->n[k].parent : -1; k >= 0; k = a->n[k].parent)
		if (a->n[k].layer != OVL_NO_LAYER && (!lowers_only || a->n[k].layer > 0))
			return a->n[k].layer;
	return OVL_NO_LAYER;
}

static int open_root(struct ovl_layer *l, const char *path, bool clone_mount, bool nodev,
		     struct ovl_anc *anc, int layer)
{
	struct stat st;
	int clone, err;

	l->fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (l->fd < 0 || fstat(l->fd, &st) < 0)
		return -errno;
	l->dev = st.st_dev;	/* a clone's too: it is the same superblock */
	l->ino = st.st_ino;
	err = anc_root(anc, l->fd, &st, layer);
	if (err)
		return err;
	/* Like the kernel (super.c:ovl_setup_trap, clone_private_mount), see
	 * the layer without what is mounted inside it: a detached,
	 * non-recursive clone of its mount shows the directories underneath.
	 * Without the privilege for that, mount points give EXDEV instead.  Not
	 * for the upper layer: copies renamed into it from the work dir must
	 * stay on one mount. */
	clone = clone_mount ? ovl_sys_open_tree_clone(l->fd, "", AT_EMPTY_PATH) : -1;
	if (clone >= 0) {
		close(l->fd);
		l->fd = clone;
		/* The clone is ours: read-only, and reading through it (a
		 * symlink's target, a directory) leaves the layer's atimes
		 * alone, as with the kernel's lower layers; nodev unless the
		 * stack opens devices.  Best effort. */
		l->nodev = ovl_sys_mount_lower(clone, nodev) == 0 && nodev;
	}
	/* These fill a getdents64 buffer as far as entries go, so a reply
	 * with room to spare for another entry is the last one. */
	struct statfs sfs;

	if (fstatfs(l->fd, &sfs) == 0)
		l->greedy_getdents = sfs.f_type == 0xEF53 /* ext2/3/4 */ ||
				     sfs.f_type == 0x58465342 /* xfs */ ||
				     sfs.f_type == 0x9123683E /* btrfs */ ||
				     sfs.f_type == 0x01021994 /* tmpfs */;
	l->pathlen = strlen(path);
	l->path = strdup(path);
	return l->path ? 0 : -ENOMEM;
}

/* The work dir: on the upper's filesystem; nothing is made in it before
 * every layer has passed check_overlaps (setup_work). */
static int open_work(struct ovl_stack *s, const char *work, struct ovl_anc *anc)
{
	struct stat st;

	s->work_fd = open(work, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (s->work_fd < 0)
		return -errno;
	if (fstat(s->work_fd, &st) < 0 || st.st_dev != s->layers[0].dev)
		return -EXDEV;	/* "workdir and upperdir must be on the same fs" */
	s->trap[1].dev = st.st_dev;
	s->trap[1].ino = st.st_ino;
	return anc_root(anc, s->work_fd, &st, OVL_LAYER_WORK);
}

/* Copies are built in <work>/work (the kernel's own scratch dir under a
 * workdir, so a kernel mount of the same layers wipes our leftovers too),
 * which must be on the upper layer's filesystem. */
static int setup_work(struct ovl_stack *s)
{
	int base = s->work_fd;
	struct stat st;

	if (mkdirat(base, "work", 0) < 0 && errno != EEXIST)
		return -errno;
	s->work_fd = openat(base, "work", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	close(base);
	if (s->work_fd < 0 || fstat(s->work_fd, &st) < 0)
		return -errno;
	s->work_setgid = st.st_mode & S_ISGID;
	return ovl_work_cleanup(s->work_fd);
}

static void set_xnames(struct ovl_stack *s, int ns)
{
	const char *pfx = ns == OVL_XATTR_USER ? "user.overlay." : "trusted.overlay.";

	strcpy(s->xprefix, pfx);
	s->xprefixlen = strlen(pfx);
	snprintf(s->x_opaque, sizeof(s->x_opaque), "%sopaque", pfx);
	snprintf(s->x_redirect, sizeof(s->x_redirect), "%sredirect", pfx);
	snprintf(s->x_whiteout, sizeof(s->x_whiteout), "%swhiteout", pfx);
	snprintf(s->x_metacopy, sizeof(s->x_metacopy), "%smetacopy", pfx);
}

/* Once every root is open (the kernel resolves every path before it checks
 * any), in the kernel's order: the work dir against the upper, a lower or
 * data layer that is an earlier layer, one that lies inside any layer.  An
 * upper or work dir inside a lower makes them traps. */
static int check_overlaps(struct ovl_stack *s, struct ovl_anc *anc, struct ovl_open_error *e)
{
	if (s->layers[0].fd >= 0) {
		s->trap[0].dev = s->layers[0].dev;
		s->trap[0].ino = s->layers[0].ino;
		/* "workdir and upperdir must be separate subtrees" */
		if (anc->dup == OVL_LAYER_WORK ||
		    anc_container(anc, s->trap[1].dev, s->trap[1].ino, false) == 0 ||
		    anc_container(anc, s->trap[0].dev, s->trap[0].ino, false) == OVL_LAYER_WORK) {
			*e = (struct ovl_open_error){ OVL_LAYER_WORK, 0, anc->dup != OVL_LAYER_WORK };
			return -EINVAL;
		}
	}
	if (anc->dup != OVL_NO_LAYER) {		/* "conflicting lowerdir path" */
		*e = (struct ovl_open_error){ anc->dup, anc->dup_of, false };
		return -ELOOP;
	}
	for (int i = 1; i < s->nlayers; i++) {	/* "overlapping lowerdir path" */
		int in = anc_container(anc, s->layers[i].dev, s->layers[i].ino, false);

		if (in != OVL_NO_LAYER) {
			*e = (struct ovl_open_error){ i, in, true };
			return -ELOOP;
		}
	}
	for (int t = 0; t < 2 && s->layers[0].fd >= 0; t++)
		if (anc_container(anc, s->trap[t].dev, s->trap[t].ino, true) != OVL_NO_LAYER)
			s->traps = true;
	return 0;
}

int ovl_stack_open(const struct ovl_config *cfg, struct ovl_stack **out,
		   struct ovl_open_error *error)
{
	struct ovl_anc anc = { .dup = OVL_NO_LAYER, .dup_of = OVL_NO_LAYER };
	struct ovl_stack *s;
	size_t total;
	struct ovl_open_error e = { OVL_LAYER_NONE, OVL_LAYER_NONE, false };
	int err = 0;

	*out = NULL;
	if (error)
		*error = e;
	if (!cfg || !cfg->lowers || cfg->nlowers == 0 || (cfg->ndata && !cfg->data_layers))
		return -EINVAL;
	if (cfg->upper && !cfg->work)
		return -EINVAL;
	if (cfg->whiteouts < OVL_WHITEOUT_KERNEL || cfg->whiteouts > OVL_WHITEOUT_AUTO ||
	    (cfg->xattr_ns != OVL_XATTR_TRUSTED && cfg->xattr_ns != OVL_XATTR_USER))
		return -EINVAL;
	/* redirect_dir=on writes what nofollow refuses to read, the OCI format
	 * cannot express, and the kernel refuses with userxattr. */
	if ((cfg->flags & OVL_CFG_REDIRECT_DIR) &&
	    ((cfg->flags & OVL_CFG_REDIRECT_NOFOLLOW) || cfg->whiteouts == OVL_WHITEOUT_OCI ||
	     cfg->xattr_ns == OVL_XATTR_USER))
		return -EINVAL;
	total = 1 + cfg->nlowers + cfg->ndata;
	if (total > OVL_MAX_LAYERS)
		return -E2BIG;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->layers = calloc(total, sizeof(*s->layers));
	s->root_ent = calloc(1, sizeof(struct ovl_ent) + 1);
	if (!s->layers || !s->root_ent) {
		free(s->layers);
		free(s->root_ent);
		free(s);
		return -ENOMEM;
	}
	for (size_t i = 0; i < total; i++)
		s->layers[i].fd = -1;
	s->work_fd = -1;
	s->upper_quiet_fd = -1;
	s->nlayers = (int)total;
	s->nlower = (int)cfg->nlowers;
	s->ndata = (int)cfg->ndata;
	s->whiteouts = cfg->whiteouts;
	s->cfg = cfg->flags;
	s->max_bytes = cfg->cache_max_bytes ? cfg->cache_max_bytes : OVL_DEFAULT_CACHE_MAX;
	set_xnames(s, cfg->xattr_ns);
	{
		/* Cold lookups take the write lock: do not let a stream of warm
		 * readers starve them. */
		pthread_rwlockattr_t attr;

		pthread_rwlockattr_init(&attr);
#ifdef PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP
		pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
		pthread_rwlock_init(&s->lock, &attr);
		pthread_rwlockattr_destroy(&attr);
	}
	for (int i = 0; i < OVL_FDCACHE; i++)
		s->fdc[i].fd = -1;
	s->mounter.groups = s->mounter.inline_groups;
	/* Layers are read and changed with the opener's credentials (cred.c). */
	err = ovl_cred_current(&s->mounter);
	if (!err)
		err = ovl_cred_ids(&s->mounter);
	if (err)
		goto fail;
	s->protected_hardlinks = ovl_read_protected_hardlinks();

	if (cfg->upper) {
		err = open_root(&s->layers[0], cfg->upper, false, false, &anc, 0);
		if (err) {
			e.layer = 0;
			goto fail;
		}
		err = open_work(s, cfg->work, &anc);
		if (err) {
			e.layer = OVL_LAYER_WORK;
			goto fail;
		}
		/* Symlink targets in the upper are read through a quiet clone:
		 * a lookup leaves their atimes alone, as the kernel's does. */
		s->upper_quiet_fd = ovl_sys_open_tree_clone(s->layers[0].fd, "", AT_EMPTY_PATH);
		if (s->upper_quiet_fd >= 0 &&
		    ovl_sys_mount_lower(s->upper_quiet_fd, !(cfg->flags & OVL_CFG_DEVICES)) < 0) {
			close(s->upper_quiet_fd);
			s->upper_quiet_fd = -1;
		}
	}
	for (size_t i = 0; i < cfg->nlowers + cfg->ndata; i++) {
		const char *p = i < cfg->nlowers ? cfg->lowers[i] :
				cfg->data_layers[i - cfg->nlowers];

		if (!p) {
			err = -EINVAL;
			e.layer = (int)i + 1;
			goto fail;
		}
		err = open_root(&s->layers[i + 1], p, true, !(cfg->flags & OVL_CFG_DEVICES),
				&anc, (int)i + 1);
		if (err) {
			e.layer = (int)i + 1;
			goto fail;
		}
	}
	err = check_overlaps(s, &anc, &e);
	if (err)
		goto fail;
	if (s->work_fd >= 0) {
		err = setup_work(s);
		if (err) {
			e.layer = OVL_LAYER_WORK;
			goto fail;
		}
	}
	s->samefs = true;
	for (int i = 0; i < s->nlayers; i++)
		if (s->layers[i].fd >= 0 && s->layers[i].dev != s->layers[1].dev)
			s->samefs = false;
	anc_free(&anc);
	probe_features(s);
	s->root_ent->dtype = DT_DIR;
	*out = s;
	return 0;
fail:
	if (error)
		*error = e;
	anc_free(&anc);
	ovl_stack_close(s);
	return err;
}

void ovl_stack_close(struct ovl_stack *s)
{
	if (!s)
		return;
	ovl_cache_flush(s);
	if (s->work_fd >= 0)
		close(s->work_fd);
	if (s->upper_quiet_fd >= 0)
		close(s->upper_quiet_fd);
	for (int i = 0; i < s->nlayers; i++) {
		if (s->layers[i].fd >= 0)
			close(s->layers[i].fd);
		free(s->layers[i].path);
	}
	pthread_rwlock_destroy(&s->lock);
	ovl_cred_release(&s->mounter);
	free(s->layers);
	free(s->root_ent);
	free(s);
}

int ovl_stack_nlayers(const struct ovl_stack *s)
{
	return s->nlayers;
}

const char *ovl_stack_layer_path(const struct ovl_stack *s, int idx)
{
	if (idx < 0 || idx >= s->nlayers)
		return NULL;
	return s->layers[idx].path;
}
