/* ovl_internal.h - data model shared by the C core's files.
 *
 * The cache is a tree of directory nodes (struct ovl_dir), each holding the
 * directory's merge stack and an index of every name found in its layers
 * (struct ovl_ent), built from one getdents pass per contributing layer.
 * Names are looked up in the index without a syscall; a name's metadata is
 * read lazily on first use.  All cache mutation happens under the stack's
 * write lock; cache-only lookups run under the read lock.
 */
#ifndef OVL_INTERNAL_H
#define OVL_INTERNAL_H

#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "compat.h"
#include "ovl.h"

#define OVL_MAX_SYMLINKS 40	/* like the kernel's MAXSYMLINKS */
#define OVL_NAME_MAX 255
#define OVL_MAX_LAYERS 65535	/* layer indices are stored in 16 bits */
#define OVL_DEFAULT_CACHE_MAX (256u << 20)
#define OVL_FDCACHE 64		/* O_PATH fds of recently used layer dirs */

struct ovl_layer {
	int fd;			/* O_PATH|O_DIRECTORY root */
	char *path;		/* host path as given */
	size_t pathlen;
	dev_t dev;
	ino_t ino;		/* of the root */
	bool greedy_getdents;	/* a short getdents64 means the end (local fs) */
	bool nodev;		/* fd is a nodev clone: devices do not open */
};

/* ovl_ent.flags */
#define OVL_E_WHITEOUT	0x01	/* the top-most occurrence hides the name */
#define OVL_E_TOPOCI	0x02	/* ".wh.NAME" sits next to the top-most occurrence */
#define OVL_E_FILLED	0x04	/* a non-directory's ext is its struct ovl_fill */
#define OVL_E_METACOPY	0x08	/* the fill's extra is a struct ovl_mcdata */

/* One name in a merged directory's index (32 bytes and the name). */
struct ovl_ent {
	uint64_t ino;		/* d_ino of the top-most occurrence */
	void *ext;		/* while building: the first-appearance number;
				   a directory: its struct ovl_dir (once built);
				   a filled non-directory: its struct ovl_fill */
	uint32_t hash;
	uint32_t occ;		/* offset of the occurrences below the top in dir->occ */
	uint16_t top;		/* stack index of the top-most occurrence */
	uint16_t nocc;
	uint16_t namelen;
	uint8_t dtype;
	uint8_t flags;
	char name[];
};

/* What a layer of a directory's stack holds under a name: one kind, and
 * whether ".wh.NAME" sits next to it (OCI whiteouts).  Kept for every layer
 * where the name occurs, so a lookup (namei.c) needs no syscall to know
 * where to look. */
enum ovl_occ_kind {
	OK_NONE = 0,	/* only ".wh.NAME" */
	OK_DIR = 1,
	OK_REG = 2,
	OK_OTHER = 3,	/* symlink, fifo, socket, device */
	OK_WH = 4,	/* char 0:0, or an xattr whiteout found while listing */
	OK_KIND = 7,
	OK_OCI = 8,
};
#define OVL_OCC(si, bits) (((uint32_t)(si) << 4) | (uint32_t)(bits))
#define OVL_OCC_SI(o) ((o) >> 4)

/* The metadata of a looked-up name, compactly encoded (fill.c:
 * typically 25-35 bytes instead of a 144-byte struct stat), followed, at
 * the next 8-byte boundary, by a symlink's target or a metacopy file's
 * struct ovl_mcdata. */
#define OVL_STAT_MAX 112
struct ovl_fill {
	uint8_t len;
	uint8_t data[];
};

static inline void *ovl_fill_extra(struct ovl_fill *f)
{
	return (char *)f + ((1u + f->len + 7u) & ~7u);
}

/* Data location of a metacopy file (err: why there is none, found lazily
 * like the kernel's data-only lookup; the metadata is still valid). */
struct ovl_mcdata {
	int64_t blocks;
	uint64_t origin_ino;	/* st_ino to report: a lower origin's, or 0 */
	int32_t err;
	uint16_t layer;
	char path[];		/* relative to the layer root */
};

/* One layer of a directory's merge stack (4 bytes: a 500-layer directory
 * is common).  Its path in that layer is the directory's union path unless
 * a redirect made it another (ovl_dir.paths). */
struct ovl_dlayer {
	uint16_t layer;
	uint8_t xmarker;	/* <ns>.overlay.opaque = "x": may hold xattr whiteouts */
	uint8_t pad;
};

struct ovl_arena_chunk;
struct ovl_build;

struct ovl_arena {
	struct ovl_arena_chunk *head;
	size_t used, cap, bytes;
};

struct ovl_dir {
	struct ovl_dir *parent;	/* NULL for the root */
	struct ovl_ent *ent;	/* our entry in the parent (s->root_ent for the root) */
	char *path;		/* union path, "" for the root */
	uint32_t pathlen;
	uint32_t nstack;
	struct ovl_dlayer *stack;
	char **paths;		/* per stack layer, NULL = path; NULL when none differ */
	struct ovl_ent **table;	/* open addressing, mask + 1 slots */
	uint32_t mask;
	uint32_t nents;		/* names incl. whiteouts */
	struct ovl_ent **order;	/* visible names in the kernel's readdir order */
	uint32_t norder;
	uint32_t *occ;		/* occurrences below the top (OVL_OCC), per entry by layer */
	uint32_t nocc;
	uint64_t origin_ino;	/* st_ino the overlay reports for a merged dir */
	struct ovl_fill *fill;	/* the top-most layer's metadata */
	bool opaque;
	bool built;		/* index complete; entries' ext are pointers */
	struct ovl_arena arena;
	size_t bytes;		/* memory besides the arena */
	struct ovl_build *build;	/* scratch while the index is built */
	size_t accounted;	/* bytes counted in the stack's total */
	uint32_t counted_ents;	/* names counted in the stack's total */
	uint32_t nfilled;	/* names whose metadata was read */
	bool in_cache;		/* counted in the stack's totals */
};

/* Credentials (cred.c): the fs ids, groups and capabilities a check uses,
 * and the ids needed to switch a thread to them and back. */
#define OVL_CRED_NGROUPS 32
struct ovl_cred {
	uid_t uid, euid;	/* fsuid, effective uid */
	gid_t gid, egid;	/* fsgid, effective gid */
	uint64_t caps;		/* effective capabilities */
	uint64_t permitted, inheritable;
	int ngroups;
	gid_t *groups;		/* inline_groups or malloc'd */
	gid_t inline_groups[OVL_CRED_NGROUPS];
};

#define OVL_MAY_EXEC 1
#define OVL_MAY_WRITE 2
#define OVL_MAY_READ 4

#define OVL_CAP_CHOWN 0
#define OVL_CAP_DAC_OVERRIDE 1
#define OVL_CAP_DAC_READ_SEARCH 2
#define OVL_CAP_FOWNER 3
#define OVL_CAP_FSETID 4
#define OVL_CAP_SYS_ADMIN 21
#define OVL_CAP_MKNOD 27
#define OVL_CAP_SETFCAP 31

struct ovl_fdslot {
	const struct ovl_dir *dir;
	uint32_t si;
	int fd;
};

struct ovl_stack {
	struct ovl_layer *layers;	/* [0] upper (fd -1 if none), lowers, data */
	int work_fd;			/* <work>/work, where copies are built; -1 */
	int upper_quiet_fd;		/* read-only noatime clone of the upper; -1 */
	int nlayers;
	int nlower;			/* lowers are 1..nlower */
	int ndata;			/* data layers follow the lowers */
	int whiteouts;
	unsigned cfg;
	bool samefs;
	bool have_openat2;
	/* The upper root and the work dir, when one lies inside a lower layer:
	 * a directory found there with one of these ids is a trap (-ELOOP). */
	struct { dev_t dev; ino_t ino; } trap[2];
	bool traps;
	bool have_xattrat;

	char xprefix[24];		/* "trusted.overlay." or "user.overlay." */
	size_t xprefixlen;
	char x_opaque[40], x_redirect[40], x_whiteout[40], x_metacopy[40];

	pthread_rwlock_t lock;
	struct ovl_dir *root;
	struct ovl_ent *root_ent;	/* stands for the root in walks */

	struct ovl_fdslot fdc[OVL_FDCACHE];	/* used under the write lock */

	struct ovl_cred mounter;	/* the opener's: changes run with them */
	bool protected_hardlinks;	/* fs.protected_hardlinks at open */
	bool work_setgid;		/* new objects there take its group */
	bool files_written;		/* an upper file was opened for writing (atomic) */

	uint64_t hits, misses, generation, flushes;	/* atomics */
	uint64_t bytes, nents, ndirs, max_bytes;	/* under the write lock */
};

/* The state of one path walk. */
struct ovl_walk {
	struct ovl_stack *s;
	bool cached_only;	/* -EAGAIN instead of I/O */
	const struct ovl_cred *cred;	/* check search permission as this caller */
	struct ovl_dir *dir;	/* directory holding ent (NULL for the root) */
	struct ovl_ent *ent;	/* the entry the path names */
};

/* getname(): a union path that does not fit in PATH_MAX with its NUL is
 * refused (-ENAMETOOLONG) before any of it is walked or copied. */
static inline bool ovl_path_too_long(const char *path)
{
	return strnlen(path, PATH_MAX) >= PATH_MAX;
}

/* The path of stack layer si of d, relative to that layer's root. */
static inline const char *ovl_dl_path(const struct ovl_dir *d, uint32_t si)
{
	return d->paths && d->paths[si] ? d->paths[si] : d->path;
}

static inline bool ovl_kernel_wh(const struct ovl_stack *s)
{
	return s->whiteouts & OVL_WHITEOUT_KERNEL;
}

static inline bool ovl_oci_wh(const struct ovl_stack *s)
{
	return s->whiteouts & OVL_WHITEOUT_OCI;
}

/* May an entry of this type not be opened (a device, without
 * OVL_CFG_DEVICES: -EACCES, as fs/namei.c:may_open_dev on a nodev mount)? */
static inline bool ovl_nodev(const struct ovl_stack *s, unsigned char dtype)
{
	return !(s->cfg & OVL_CFG_DEVICES) && (dtype == DT_CHR || dtype == DT_BLK);
}

static inline uint64_t ovl_atomic_inc(uint64_t *p)
{
	return __atomic_add_fetch(p, 1, __ATOMIC_RELAXED);
}

static inline uint64_t ovl_atomic_get(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* Prototypes by the file that defines them, in the order of OVL_SOURCES
 * (CMakeLists.txt): a file calls only the files above it (ctest layering). */

/* layers.c */
/* How anything inside a layer is opened: never outside it (openat2). */
#define OVL_RESOLVE (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | \
		     RESOLVE_NO_XDEV)
int ovl_layer_open(const struct ovl_stack *s, int layer, const char *relpath,
		   int oflags);
int ovl_layer_open_dir(const struct ovl_stack *s, int layer, const char *relpath);
int ovl_layer_open_file(const struct ovl_stack *s, int layer, const char *relpath,
			int oflags);
int ovl_nodev_fd(const struct ovl_stack *s, int layer, int fd);
int ovl_upper_quiet_dir(const struct ovl_stack *s, const char *relpath);
long ovl_fd_getxattr(int fd, const char *name, void *buf, size_t size);
long ovl_at_listxattr(const struct ovl_stack *s, int dfd, const char *name,
		      char **buf);
long ovl_at_getxattr(const struct ovl_stack *s, int dfd, const char *name,
		     const char *xname, void *buf, size_t size);
char *ovl_path_join(const char *a, size_t alen, const char *b, size_t blen);
/* The calling thread's error detail (ovl_last_error): written only where a
 * damaged stack makes a call fail (ovl_error), forgotten by one store when
 * a call starts (ovl_error_clear: ovl_run, ovl_change_begin and the public
 * calls that can fail before them). */
struct ovl_errd {
	const struct ovl_stack *s;
	int err;			/* what the call returns; 0: nothing recorded */
	struct ovl_error_detail d;
};
extern _Thread_local struct ovl_errd ovl_errd __attribute__((visibility("hidden")));
static inline void ovl_error_clear(void)
{
	ovl_errd.err = 0;
}
int ovl_error(const struct ovl_stack *s, int err, int layer, const char *reason,
	      const char *dir, const char *name, const char *value, size_t vlen);

/* cred.c */
int ovl_cred_current(struct ovl_cred *c);
int ovl_cred_ids(struct ovl_cred *c);
void ovl_cred_release(struct ovl_cred *c);
bool ovl_cred_same(const struct ovl_cred *a, const struct ovl_cred *b);
bool ovl_cred_reads_as_opener(const struct ovl_stack *s);
int ovl_cred_enter(const struct ovl_stack *s, struct ovl_cred *caller);
void ovl_cred_leave(const struct ovl_stack *s, const struct ovl_cred *caller);
bool ovl_capable(const struct ovl_cred *c, int cap);
bool ovl_in_group(const struct ovl_cred *c, gid_t gid);
int ovl_permission(const struct ovl_cred *c, const struct stat *st, int mask);
bool ovl_owner_or_capable(const struct ovl_cred *c, const struct stat *st);
int ovl_may_delete(const struct ovl_cred *c, const struct stat *dir, const struct stat *victim);
int ovl_may_create(const struct ovl_cred *c, const struct stat *dir);
mode_t ovl_strip_sgid(const struct ovl_cred *c, const struct stat *dir, mode_t mode);
mode_t ovl_kill_suid(const struct ovl_cred *c, mode_t mode);
int ovl_may_link(const struct ovl_stack *s, const struct ovl_cred *c, const struct stat *st);
int ovl_read_protected_hardlinks(void);

/* copy_data.c */
#define OVL_COPY_SET_SIZE 0x1	/* ovl_copy_data: give out the size at the end */
#define OVL_COPY_SPARSE 0x2	/* ovl_copy_data: in may have holes: keep them */
int ovl_copy_data(int in, int out, off_t size, unsigned flags);

/* whiteout.c */
bool ovl_is_whiteout_dev(mode_t mode, dev_t rdev);
bool ovl_is_whiteout_stat(const struct stat *st);
int ovl_mknod_whiteout(int dfd, const char *name);
int ovl_classify_chr(const struct ovl_stack *s, int dfd, const char *name);
int ovl_is_xwhiteout_at(const struct ovl_stack *s, int dfd, const char *name);
bool ovl_oci_is_marker(const char *name, size_t len);
bool ovl_oci_is_opaque_marker(const char *name);
size_t ovl_oci_hidden_name(const char *marker, size_t len, const char **hidden);
void ovl_oci_whiteout_name(char *buf, size_t size, const char *name);
bool ovl_oci_whiteout_at(int dfd, const char *name);
bool ovl_oci_opaque_at(int fd);
int ovl_oci_make_opaque(int fd);
int ovl_dir_xattrs(const struct ovl_stack *s, int fd, char *opaque,
		   bool *has_redirect);
int ovl_fd_redirect(const struct ovl_stack *s, int fd, char **out);
int ovl_parse_redirect(const char *buf, long len, char **out);
bool ovl_xattr_is_private(const struct ovl_stack *s, const char *name);

/* cache.c */
void *ovl_arena_alloc(struct ovl_arena *a, size_t size);
int ovl_arena_reserve(struct ovl_arena *a, size_t size);
bool ovl_arena_room(const struct ovl_arena *a, size_t size);
void ovl_arena_free(struct ovl_arena *a);
uint32_t ovl_name_hash(const char *name, size_t len);
struct ovl_ent *ovl_dir_find(const struct ovl_dir *d, const char *name,
			     size_t len, uint32_t hash);
struct ovl_ent *ovl_dir_insert(struct ovl_dir *d, const char *name, size_t len,
			       uint32_t hash);
int ovl_occ_bits(const struct ovl_dir *d, const struct ovl_ent *e, uint32_t si);
struct ovl_dir *ovl_dir_new(struct ovl_stack *s, struct ovl_dir *parent,
			    struct ovl_ent *ent);
void ovl_dir_free(struct ovl_stack *s, struct ovl_dir *d);
void ovl_dir_account(struct ovl_stack *s, struct ovl_dir *d);
void ovl_cache_flush(struct ovl_stack *s);
void ovl_cache_drop_dir(struct ovl_stack *s, struct ovl_dir *d);
void ovl_cache_changed(struct ovl_stack *s);
void ovl_cache_flush_if_over(struct ovl_stack *s);
int ovl_fdcache_get(struct ovl_stack *s, const struct ovl_dir *d, uint32_t si);
void ovl_fdcache_drop(struct ovl_stack *s, const struct ovl_dir *d);

/* fill.c */
size_t ovl_fill_size(const struct stat *st, size_t extra);
struct ovl_fill *ovl_fill_new(struct ovl_arena *a, const struct stat *st, size_t extra);
void ovl_fill_stat(const struct ovl_fill *f, struct stat *st);
const char *ovl_ent_target(const struct ovl_ent *e);
void ovl_ent_attr(const struct ovl_dir *node, const struct ovl_ent *e, struct stat *st);
int ovl_mc_error(const struct ovl_stack *s, const struct ovl_dir *d, const struct ovl_ent *e);

/* readdir.c */
int ovl_index_layer(struct ovl_stack *s, struct ovl_dir *d, uint32_t si,
		    int fd, bool *oci_opaque);
int ovl_index_finish(struct ovl_dir *d);
int ovl_build_begin(struct ovl_dir *d);
void ovl_build_end(struct ovl_dir *d);

/* namei.c */
int ovl_ent_dir(struct ovl_walk *w, struct ovl_dir *parent, struct ovl_ent *e,
		struct ovl_dir **out);
int ovl_resolve_ent(struct ovl_walk *w, struct ovl_dir *p, struct ovl_ent *e);
int ovl_fill_plain(struct ovl_stack *s, struct ovl_dir *p, struct ovl_ent *e,
		   const struct stat *st, const char *target);

/* walk.c */
int ovl_may_search(const struct ovl_cred *c, const struct ovl_dir *d);
int ovl_walk_path(struct ovl_walk *w, const char *path, unsigned flags);

#define OVL_RUN_CHECKED 0x100	/* ovl_run: fn does I/O; check the caller */
typedef int (*ovl_op_fn)(struct ovl_walk *w, void *arg);
int ovl_run(struct ovl_stack *s, const char *path, unsigned flags,
	    ovl_op_fn fn, void *arg);

/* One change (copy_up.c and the files above it): the caller's credentials for the checks,
 * the opener's entered for the work, the stack's write lock held. */
struct ovl_change {
	struct ovl_stack *s;
	struct ovl_cred cred;
	int entered;
};
int ovl_change_begin(struct ovl_stack *s, struct ovl_change *c);
int ovl_change_end(struct ovl_change *c, int err);

/* inode.c */
int ovl_ent_relpath(const struct ovl_stack *s, const struct ovl_dir *d,
		    const struct ovl_ent *e, int *layer, char **out);

/* copy_up.c */
int ovl_work_cleanup(int work_fd);
int ovl_renameat2(int olddfd, const char *old, int newdfd, const char *new_,
		  unsigned flags);
void ovl_temp_name(char *buf, size_t size);
int ovl_open_upper_dir(struct ovl_stack *s, const char *dpath, struct stat *st);
int ovl_copy_up_dir(struct ovl_stack *s, struct ovl_dir *d, struct ovl_dir **top);
/* ovl_copy_up_ent flags: open(2) flags of the change (data is copied up
 * for O_WRONLY, O_RDWR, O_TRUNC), and: */
#define OVL_COPY_UP_QUIET 0x40000000	/* data up, but keep the file's times */
int ovl_copy_up_ent(struct ovl_walk *w, struct ovl_dir *p, struct ovl_ent *e, int flags,
		    struct ovl_dir **changed, int *method);

/* target.c */
/* Where a change happens: the parent directory and the last name. */
struct ovl_target {
	struct ovl_walk w;
	struct ovl_dir *dir;	/* the parent directory (built) */
	char name[OVL_NAME_MAX + 1];
	size_t len;
	bool slash;		/* the path ended in '/' */
	bool dot;		/* the name is "." or ".." */
	struct ovl_ent *ent;	/* the name, if it exists (resolved) */
	struct ovl_dir *node;	/* its directory node, for a directory */
	struct ovl_dir *changed;	/* to drop from the cache afterwards */
};
int ovl_find_target(struct ovl_stack *s, const struct ovl_cred *cred, const char *path,
		    struct ovl_target *t);
void ovl_target_attr(const struct ovl_target *t, struct stat *st);
bool ovl_aliased(int udir, const char *name, nlink_t min);
void ovl_drop_changed(struct ovl_stack *s, struct ovl_dir *changed, bool all);
int ovl_upper_object(struct ovl_stack *s, const char *path, unsigned flags, int oflags,
		     struct ovl_target *t, int *udir, const char **name);
int ovl_kill_suid_fd(int fd, mode_t kill);
int ovl_walk_object(struct ovl_stack *s, const struct ovl_cred *cred, const char *path,
		    unsigned flags, struct ovl_walk *w, struct stat *st);

/* setattr.c, xattrs.c: only the functions of ovl.h */

/* dir.c */
/* What a create makes, in the work dir or in place. */
struct ovl_create {
	mode_t mode;		/* type and permission bits */
	dev_t rdev;
	const char *target;	/* symlinks */
	int oflags;		/* regular files opened by the create */
	int fd;			/* out: the open file */
	uid_t uid;		/* the owner the kernel gives it */
	gid_t gid;
	bool sgid_parent;	/* made under a setgid directory */
	bool other_owner;	/* the caller is not the opener */
};
int ovl_create_common(struct ovl_stack *s, const struct ovl_cred *cred, const char *path,
		      struct ovl_create *c);

/* file.c, super.c: only the functions of ovl.h */

/* tar.c */
/* One entry of a tar stream as the reader hands it out.  Pointers stay
 * valid until the entry's data is over (ops->entry_end). */
struct ovl_tar_member_xattr {
	char *name;		/* NUL-terminated (SCHILY.xattr.NAME) */
	char *value;		/* binary, len bytes */
	size_t len;
};
struct ovl_tar_seg {
	uint64_t off, len;	/* a data extent of a sparse file */
};
struct ovl_tar_member {
	char *name;		/* NUL-terminated; may hold a NUL (namelen counts) */
	size_t namelen;
	char *linkname;		/* symlink target or hardlink target */
	size_t linklen;
	char type;		/* '0' file, '1' hardlink, '2' symlink, '3' char,
				   '4' block, '5' dir, '6' fifo */
	mode_t mode;		/* permission, set-id and sticky bits */
	uint64_t uid, gid;
	uint64_t devmajor, devminor;
	struct timespec mtime, atime;
	bool has_atime;
	uint64_t size;		/* the file's size (a sparse file's real size) */
	uint64_t data_size;	/* data bytes in the archive */
	bool is_sparse;
	struct ovl_tar_seg *sparse;	/* the data extents, in order */
	size_t nsparse;
	struct ovl_tar_member_xattr *xattrs;
	size_t nxattrs;
	const uint8_t *raw;	/* every header byte of the entry (extension
				   headers and sparse maps too), if recording */
	size_t rawlen;
};
/* ovl_tar_ops.raw kinds: the bytes of the stream that are neither headers
 * nor data (tar-split). */
#define OVL_TAR_RAW_PAD 1	/* padding after an entry's data */
#define OVL_TAR_RAW_TRAILER 2	/* the end blocks and what follows them */
struct ovl_tar_ops {
	int (*entry)(void *ctx, const struct ovl_tar_member *e);
	int (*data)(void *ctx, const void *buf, size_t len, uint64_t off);
	int (*entry_end)(void *ctx);
	int (*raw)(void *ctx, int kind, const void *buf, size_t len);	/* may be NULL */
};
struct ovl_tar;
int ovl_tar_new(const struct ovl_tar_ops *ops, void *ctx, bool record,
		struct ovl_tar **out);
int ovl_tar_feed(struct ovl_tar *t, const void *buf, size_t n);
int ovl_tar_finish(struct ovl_tar *t);
const struct ovl_tar_member *ovl_tar_current(const struct ovl_tar *t);
void ovl_tar_free(struct ovl_tar *t);

/* tar_write.c, apply.c, export.c: only the functions of ovl.h */

#endif /* OVL_INTERNAL_H */
