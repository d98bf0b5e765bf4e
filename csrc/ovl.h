/* ovl.h - public C API of the overlayfs union-lookup core.
 *
 * A struct ovl_stack is a read-only view of an OverlayFS layer stack that
 * resolves paths the way the kernel's overlayfs does, without mounting:
 * whiteouts (char 0:0, xattr and OCI ".wh." forms), opaque directories,
 * directory redirects, metacopy files and data-only layers, merged readdir.
 * Symlinks are followed inside the union root, never outside it, and every
 * access to a layer is fd-relative and contained in that layer's root.
 *
 * Conventions: functions return 0 (or a length) on success and -errno on
 * failure; they never print.  Union paths are '/'-separated byte strings
 * relative to the union root ("" and "/" name the root).  Layer indices:
 * 0 is the upper layer, 1..N the lower layers top-most first, N+1.. the
 * data-only layers.  A stack may be used from several threads at once.
 *
 * Credentials (cred.c): like a mount, a stack keeps the credentials it was
 * opened with and reads and changes the layers with them.  Changes, ovl_open
 * and the xattr reads check the calling thread's fsuid, fsgid, groups and
 * capabilities against the merged objects first, as the VFS checks the
 * overlay inode (-EACCES, -EPERM); a thread whose credentials differ from
 * the opener's switches to them for the call (per thread) and back.  A
 * thread that cannot (it dropped the opener's ids for good) gets -EPERM for
 * a change and reads with its own credentials.
 */
#ifndef OVL_H
#define OVL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OVL_API_VERSION 5

/* What libovl.so exports: these functions and nothing else (the core is
 * built with -fvisibility=hidden), as libuv marks its API with UV_EXTERN. */
#ifndef OVL_API
#define OVL_API __attribute__((visibility("default")))
#endif

struct ovl_stack;

enum ovl_whiteout_mode {
	OVL_WHITEOUT_KERNEL = 1,	/* char 0:0 and <ns>.overlay.whiteout files */
	OVL_WHITEOUT_OCI = 2,		/* ".wh.NAME" and ".wh..wh..opq" on disk */
	OVL_WHITEOUT_AUTO = 3,		/* both */
};

enum ovl_xattr_ns {
	OVL_XATTR_TRUSTED = 0,		/* trusted.overlay.* (the kernel's default) */
	OVL_XATTR_USER = 1,		/* user.overlay.* (mount option userxattr) */
};

/* struct ovl_config.flags */
#define OVL_CFG_NO_CACHE	 0x1	/* drop the cache after every call */
#define OVL_CFG_METACOPY	 0x2	/* like mount -o metacopy=on */
#define OVL_CFG_REDIRECT_NOFOLLOW 0x4	/* like redirect_dir=nofollow: EPERM */
#define OVL_CFG_VOLATILE	 0x8	/* like -o volatile: copy-up skips fsync */
/* Like -o redirect_dir=on: ovl_rename of a merged or lower directory copies
 * the directory alone up and sets <ns>.overlay.redirect on it (the old name
 * in the same parent, else the absolute path, at most 256 bytes like the
 * kernel's redirect_max, -EXDEV past it); mkdir in a merged directory makes
 * an opaque directory.  ovl_stack_open gives -EINVAL with
 * OVL_CFG_REDIRECT_NOFOLLOW, with OVL_WHITEOUT_OCI (that format has no
 * redirects) and with OVL_XATTR_USER (the kernel refuses userxattr with
 * redirect_dir=on). */
#define OVL_CFG_REDIRECT_DIR	 0x10
/* Open char and block devices (ovl_open, ovl_open_write).  Without it the
 * stack reads its layers as a nodev mount would: opening a device node
 * gives -EACCES (fs/namei.c:may_open_dev), so a layer's "dev/sda" never
 * reaches the host's disk.  Copying a device node up (mknod) is allowed
 * either way. */
#define OVL_CFG_DEVICES		 0x20

struct ovl_config {
	const char *const *lowers;	/* host paths, top-most first */
	size_t nlowers;			/* >= 1 */
	const char *upper;		/* NULL for a read-only stack */
	const char *work;		/* required with upper */
	const char *const *data_layers;	/* reached only through redirects */
	size_t ndata;
	int xattr_ns;			/* enum ovl_xattr_ns */
	int whiteouts;			/* enum ovl_whiteout_mode */
	unsigned flags;			/* OVL_CFG_* */
	size_t cache_max_bytes;		/* 0: the default (256 MiB) */
};

/* Which layers an ovl_stack_open failure is about: an index as in
 * ovl_stack_layer_path (0 the upper, 1.. the lowers then the data layers),
 * OVL_LAYER_WORK for the work dir, OVL_LAYER_NONE when none is to blame. */
#define OVL_LAYER_NONE	(-1)
#define OVL_LAYER_WORK	(-2)
struct ovl_open_error {
	int layer;			/* the layer refused */
	int other;			/* the layer it conflicts with */
	bool inside;			/* one lies inside the other (else they are
					   the same directory) */
};

/* Open a stack.  Every layer root is opened once (O_PATH|O_DIRECTORY).
 * Return 0 and set *out, or -errno, with *err (if not NULL) saying which
 * layer is to blame:
 * -EINVAL no lowers, or upper without work; -ENOENT/-ENOTDIR/-EACCES for a
 * layer root; -E2BIG more than 65535 layers; -EINVAL for
 * OVL_CFG_REDIRECT_DIR with OVL_CFG_REDIRECT_NOFOLLOW, OVL_WHITEOUT_OCI or
 * OVL_XATTR_USER.  Overlapping layers are refused as the kernel refuses to
 * mount them (super.c:ovl_get_workdir, ovl_setup_trap,
 * ovl_check_overlapping_layers): -EXDEV for a work dir on another
 * filesystem than the upper; -EINVAL when the work dir and the upper are
 * one directory or one lies inside the other ("workdir and upperdir must be
 * separate subtrees"); -ELOOP for a lower or data layer that is the upper,
 * the work dir or an earlier layer ("conflicting lowerdir path", other
 * names it), or lies inside any layer ("overlapping lowerdir path").  The
 * kernel mounts an upper or work dir inside a lower layer: lookups that
 * reach it through that layer then give -ELOOP, as the kernel's traps do. */
OVL_API int ovl_stack_open(const struct ovl_config *cfg, struct ovl_stack **out,
		   struct ovl_open_error *err);
OVL_API void ovl_stack_close(struct ovl_stack *s);

/* Number of layer slots (1 + lowers + data layers; slot 0 may be empty). */
OVL_API int ovl_stack_nlayers(const struct ovl_stack *s);
/* Host path of layer idx as given at open, or NULL (no upper / bad idx). */
OVL_API const char *ovl_stack_layer_path(const struct ovl_stack *s, int idx);

/* Why a call failed when the layers themselves are to blame: a lookup that
 * meets a damaged or inconsistent stack fails with the errno the kernel
 * gives (-EINVAL an invalid redirect, -EIO a metacopy file with no data
 * below or a malformed metacopy xattr, -EACCES "." or ".." in a redirect,
 * -EPERM a metacopy file or redirect the configuration does not follow,
 * -ELOOP the upper or work dir reached through a lower layer, -EXDEV a
 * mount point inside a layer, -ESTALE a layer changed behind the cache,
 * -ENOENT and the like for a metacopy redirect found in no data-only layer)
 * and records, for the calling thread, which layer holds what is wrong and
 * why, as psutil names the syscall next to the errno.  Text is cut to fit
 * (OVL_ERROR_TEXT_MAX - 1 bytes). */
#define OVL_ERROR_TEXT_MAX 256
struct ovl_error_detail {
	int layer;		/* index as in ovl_stack_layer_path */
	const char *reason;	/* static text, e.g. "metacopy file with no data
				   in the layers below" */
	char path[OVL_ERROR_TEXT_MAX];	/* the object, relative to the layer
					   root ("" for the root itself) */
	char value[OVL_ERROR_TEXT_MAX];	/* the offending value (a redirect) or "" */
};

/* Return 0 and fill *out if the calling thread's last call on s returned
 * err (a -errno) and recorded a detail for it; -ENODATA otherwise (a
 * missing name, a failed syscall, a successful call...).  Every call that
 * can record a detail forgets the previous one when it starts, so a
 * detail never outlives the call that made it. */
OVL_API int ovl_last_error(const struct ovl_stack *s, int err, struct ovl_error_detail *out);

/* ovl_lookup flags */
#define OVL_LOOKUP_FOLLOW 0x1	/* follow a symlink in the last component */
#define OVL_LOOKUP_CACHED 0x2	/* answer from the cache or fail with -EAGAIN;
				   never blocks on I/O or on the writer lock */

/* struct ovl_info.flags */
#define OVL_INFO_MERGED	  0x1	/* directory merged from more than one layer */
#define OVL_INFO_METACOPY 0x2	/* metadata here, data in info.data_layer */
#define OVL_INFO_OPAQUE	  0x4	/* opaque directory */

struct ovl_info {
	struct stat st;		/* as the overlay shows it (st_nlink 1 for merged
				   dirs, st_blocks of the data for metacopy) */
	int layer;		/* layer that supplies the entry */
	int data_layer;		/* layer holding the data (== layer unless metacopy) */
	unsigned flags;		/* OVL_INFO_* */
};

/* Resolve path and describe the winning entry.
 * Return 0, -ENOENT (missing or whited out), -ENOTDIR, -ELOOP (more than 40
 * symlinks), -ENAMETOOLONG, -EINVAL (invalid redirect), -EPERM (metacopy or
 * redirect not allowed), -EIO (metacopy without data), -EACCES ("." or ".."
 * in a redirect), -EXDEV (a mount point inside a layer, when layer mounts
 * could not be cloned), -ESTALE (a layer changed behind the cache: call
 * ovl_invalidate), -EAGAIN (OVL_LOOKUP_CACHED and not cached), <0 on error. */
OVL_API int ovl_lookup(struct ovl_stack *s, const char *path, unsigned flags,
	       struct ovl_info *out);

/* Write the host path of the winning entry (last component followed only
 * with OVL_LOOKUP_FOLLOW) into buf, NUL-terminated.  With want_data, the
 * data file of a metacopy entry.  Return its length, -ERANGE if bufsize is
 * too small, or an ovl_lookup error. */
OVL_API long ovl_realpath(struct ovl_stack *s, const char *path, unsigned flags,
		  int want_data, char *buf, size_t bufsize, int *layer);

/* Read the target of the symlink at path.  Return the length (not
 * NUL-terminated, truncated to bufsize like readlink(2)), -EINVAL if it is
 * not a symlink, or an ovl_lookup error. */
OVL_API long ovl_readlink(struct ovl_stack *s, const char *path, char *buf,
		  size_t bufsize);

/* Open the data of the entry for reading (open flags: O_RDONLY plus
 * O_NONBLOCK/O_CLOEXEC/O_NOATIME/O_NOCTTY/O_NOFOLLOW/O_DIRECTORY), through
 * the layer root with no symlink or mount crossing.  A directory opens as
 * its top-most layer's directory (ovl_listdir gives the merged listing).
 * Return an fd, -ENOTDIR (O_DIRECTORY on a non-directory), -EROFS for write
 * flags, -EINVAL for other flags, -EACCES for a char or block device
 * without OVL_CFG_DEVICES, or an ovl_lookup error. */
OVL_API int ovl_open(struct ovl_stack *s, const char *path, int oflags);

/* One merged directory entry. */
struct ovl_dirent {
	const char *name;	/* NUL-terminated, points into the list */
	uint64_t ino;		/* d_ino from the supplying layer */
	uint32_t namelen;
	uint16_t layer;
	uint8_t d_type;		/* DT_* of the top-most occurrence */
};

struct ovl_dirlist {
	size_t n;
	uint64_t generation;	/* cache generation the list was made at */
	struct ovl_dirent *ents;
};

/* List the merged directory at path (symlinks followed), in the kernel's
 * order, without whiteouts (an xattr whiteout outside a directory marked
 * opaque=x is listed, as the kernel lists it).  Names whose lookup fails
 * with an error other than ENOENT are listed.  Return 0 and a list to free
 * with ovl_dirlist_free, or an ovl_lookup error (-ENOTDIR for a
 * non-directory). */
OVL_API int ovl_listdir(struct ovl_stack *s, const char *path, unsigned flags,
		struct ovl_dirlist **out);
OVL_API void ovl_dirlist_free(struct ovl_dirlist *list);

/* Overlay-visible xattrs of the winning entry: the stack's private
 * "<ns>.overlay.*" names are hidden, escaped "<ns>.overlay.overlay.X" names
 * are shown as "<ns>.overlay.X".  Same return conventions as getxattr(2)
 * and listxattr(2) (size 0 asks for the size). */
OVL_API long ovl_getxattr(struct ovl_stack *s, const char *path, unsigned flags,
		  const char *name, void *buf, size_t size);
OVL_API long ovl_listxattr(struct ovl_stack *s, const char *path, unsigned flags,
		   char *buf, size_t size);

/* How a copy-up moved the data (ovl_copy_up's return value). */
enum ovl_copy_method {
	OVL_COPY_NONE = 0,	/* nothing to copy: already up, empty, or not a file */
	OVL_COPY_CLONE = 1,	/* FICLONE: extents shared, no data moved */
	OVL_COPY_CFR = 2,	/* copy_file_range over the data extents */
	OVL_COPY_SENDFILE = 3,
	OVL_COPY_RW = 4,	/* read/write through a buffer */
};

/* Copy the entry at path up to the upper layer, its ancestors first, the
 * way the kernel does before changing it (see copy_up.c for the order and
 * the guarantees: atomic through the work dir, safe against concurrent
 * copiers); an upper metacopy file gets its data (as before a write).
 * OVL_LOOKUP_FOLLOW copies up a final symlink's target.  Return an enum
 * ovl_copy_method (OVL_COPY_NONE if it was already up), -EROFS for a stack
 * without an upper layer, or a lookup or copy error. */
OVL_API int ovl_copy_up(struct ovl_stack *s, const char *path, unsigned flags);

/* Changes, made as the kernel's overlayfs makes them (dir.c, setattr.c,
 * xattrs.c, file.c): the parent chain is copied up first; a name that
 * exists below is removed with a whiteout in the stack's form (char 0:0,
 * or ".wh.NAME" for OVL_WHITEOUT_OCI), an upper-only one without a trace;
 * a directory made over a whiteout is opaque.  All return 0 (an fd for ovl_open_write) or
 * -errno as the same call through an overlay mount would: -EROFS without
 * an upper layer, -ENOENT, -EEXIST, -ENOTEMPTY (judged on the merged
 * view, where an xattr whiteout counts as an entry, as in the kernel),
 * -EISDIR, -ENOTDIR...  flags: OVL_LOOKUP_FOLLOW or 0. */
OVL_API int ovl_unlink(struct ovl_stack *s, const char *path);
OVL_API int ovl_rmdir(struct ovl_stack *s, const char *path);
OVL_API int ovl_mkdir(struct ovl_stack *s, const char *path, mode_t mode);
OVL_API int ovl_mknod(struct ovl_stack *s, const char *path, mode_t mode, dev_t dev);
OVL_API int ovl_symlink(struct ovl_stack *s, const char *target, const char *path);
OVL_API int ovl_chmod(struct ovl_stack *s, const char *path, unsigned flags, mode_t mode);
OVL_API int ovl_chown(struct ovl_stack *s, const char *path, unsigned flags, uid_t uid, gid_t gid);
OVL_API int ovl_utimens(struct ovl_stack *s, const char *path, unsigned flags,
		const struct timespec ts[2]);
OVL_API int ovl_truncate(struct ovl_stack *s, const char *path, off_t length);
OVL_API int ovl_setxattr(struct ovl_stack *s, const char *path, unsigned flags, const char *name,
		 const void *value, size_t size, int xflags);
OVL_API int ovl_removexattr(struct ovl_stack *s, const char *path, unsigned flags, const char *name);
/* rename(2), replacing to: -EXDEV for a directory that is merged or only in
 * a lower layer (the kernel without redirect_dir); copy and delete instead.
 * With OVL_CFG_REDIRECT_DIR such a directory is copied up alone and gets a
 * redirect (-EXDEV only when the absolute redirect would pass 256 bytes,
 * or the xattr cannot be set, after the copy-up, as in the kernel). */
OVL_API int ovl_rename(struct ovl_stack *s, const char *from, const char *to);
OVL_API int ovl_link(struct ovl_stack *s, const char *from, const char *to);
/* open(2) for writing, truncating or creating (O_WRONLY/O_RDWR, O_APPEND,
 * O_TRUNC, O_CREAT, O_EXCL, O_NOFOLLOW...): a regular file is copied up
 * (or created in the upper layer) and opened there; a fifo or device is
 * opened where it is (a device only with OVL_CFG_DEVICES, else -EACCES).
 * Return an fd or -errno. */
OVL_API int ovl_open_write(struct ovl_stack *s, const char *path, int oflags, mode_t mode);

struct ovl_cache_stats {
	uint64_t hits;		/* lookups answered without I/O */
	uint64_t misses;	/* lookups that had to read a layer */
	uint64_t entries;	/* cached names */
	uint64_t dirs;		/* cached directories */
	uint64_t bytes;		/* memory held by the cache */
	uint64_t max_bytes;	/* the cap; past it the cache is emptied */
	uint64_t generation;	/* bumped by every invalidation */
	uint64_t flushes;	/* times the cap emptied the cache */
};

OVL_API void ovl_cache_stats(struct ovl_stack *s, struct ovl_cache_stats *out);
OVL_API uint64_t ovl_cache_generation(const struct ovl_stack *s);

/* Forget what is cached about path (and everything below it), or about
 * everything when path is NULL.  Return 0 or -errno. */
OVL_API int ovl_invalidate(struct ovl_stack *s, const char *path);

/* Applying a layer tar (apply.c): graphdriver ApplyDiff, umoci raw unpack.
 *
 * A push API: ovl_apply_begin, then ovl_apply_feed with the uncompressed
 * tar stream in chunks of any size, then ovl_apply_end; ovl_apply_free
 * always.  Every object is made fd-relative under the target root: parent
 * paths are resolved with openat2(RESOLVE_IN_ROOT) (a symlink met on the
 * way resolves inside the root, absolute ones from the root), the last
 * component is never followed, and owners, modes, xattrs and times are
 * set on an fd or with AT_SYMLINK_NOFOLLOW.  The rules (apply.c has them
 * in full): an entry name or hardlink target that is empty or escapes the
 * root lexically ("..") is refused; a leading "/" is dropped (names are
 * relative to the root, as tar and moby take them); the root entry "./"
 * is skipped; duplicate entries: the last wins (a directory over a
 * directory merges and takes the new metadata, anything else replaces);
 * directory times are set at the end; PAX global headers are ignored.
 *
 * OVL_APPLY_LAYER builds one overlay layer directory, dest, which must
 * not exist: into a temp dir beside it, published with one
 * renameat2(RENAME_NOREPLACE) after one syncfs; on failure nothing is
 * left.  ".wh.NAME" becomes a whiteout (char 0:0, or with
 * OVL_APPLY_XATTR_WHITEOUTS a zero-size file with <ns>.overlay.whiteout in
 * a directory marked <ns>.overlay.opaque=x), DIR/.wh..wh..opq makes DIR
 * opaque (<ns>.overlay.opaque=y); at the root, where the kernel ignores
 * opaque, it is emulated with whiteouts of every name the lowers show
 * (with no lowers: OVL_APPLY_E_WHITEOUT).  The lowers (host paths, top
 * first, read as a stack) also give implied parents their mode and owner
 * and let a hardlink to a lower file copy it up first.
 * OVL_APPLY_ROOTFS applies into the existing directory dest (moby
 * ApplyLayer): a whiteout deletes NAME, an opaque marker deletes every
 * child this layer did not make (a whiteout never deletes what the same
 * layer made: the OCI rule). */
enum ovl_apply_mode {
	OVL_APPLY_LAYER = 0,
	OVL_APPLY_ROOTFS = 1,
};

/* struct ovl_apply_config.flags */
#define OVL_APPLY_SAME_OWNER	0x1	/* chown to the tar's uid/gid */
#define OVL_APPLY_DEVICES	0x2	/* make char/block devices (else skipped) */
#define OVL_APPLY_NO_SYNC	0x4	/* no syncfs before publishing */
#define OVL_APPLY_XATTR_WHITEOUTS 0x8	/* whiteouts as xattr files, not char 0:0 */
#define OVL_APPLY_TAR_SPLIT	0x10	/* record tar-split (ovl_apply_split) */

struct ovl_apply_config {
	const char *dest;		/* host path */
	const char *const *lowers;	/* OVL_APPLY_LAYER only, top first */
	size_t nlowers;
	int mode;			/* enum ovl_apply_mode */
	int xattr_ns;			/* enum ovl_xattr_ns, of the whiteout xattrs */
	unsigned flags;			/* OVL_APPLY_* */
	uint64_t max_size;		/* tar bytes allowed, 0: no limit */
};

/* Why an apply failed (ovl_apply_error). */
enum ovl_apply_class {
	OVL_APPLY_E_NONE = 0,
	OVL_APPLY_E_CORRUPT = 1,	/* bad header, checksum, number, PAX record,
					   sparse map, trailing garbage, id out of range */
	OVL_APPLY_E_TRUNCATED = 2,	/* the stream ended inside an entry */
	OVL_APPLY_E_UNSAFE = 3,		/* a name or hardlink target escapes or is empty */
	OVL_APPLY_E_WHITEOUT = 4,	/* ".wh." alone, ".wh..", of ".wh.*", char 0:0,
					   root opaque without lowers */
	OVL_APPLY_E_CONFLICT = 5,	/* a parent is not a directory */
	OVL_APPLY_E_TOO_LARGE = 6,	/* past max_size, or an extension past 1 MiB */
	OVL_APPLY_E_IO = 7,		/* a system call failed (the errno) */
};

struct ovl_apply_stats {
	uint64_t bytes;			/* tar bytes consumed */
	uint64_t entries;		/* headers applied (whiteouts included) */
	uint64_t files, dirs, symlinks, hardlinks, devices, fifos;
	uint64_t whiteouts, opaques;
	uint64_t skipped;		/* devices without OVL_APPLY_DEVICES, volume labels */
	uint64_t copied_up;		/* lower files copied up for hardlinks */
	uint64_t data_bytes;		/* file data written */
};

struct ovl_apply;

/* Start an apply.  Return 0 and set *out, or -errno: -EEXIST (layer mode:
 * dest exists), -ENOENT/-ENOTDIR (rootfs mode: dest; either: its parent),
 * -EINVAL (a bad mode, lowers with OVL_APPLY_ROOTFS), or an ovl_stack_open
 * error for the lowers. */
OVL_API int ovl_apply_begin(const struct ovl_apply_config *cfg, struct ovl_apply **out);
/* Apply len bytes of the tar stream.  Return 0 (all consumed) or -errno;
 * ovl_apply_error says why.  After an error every call fails again. */
OVL_API int ovl_apply_feed(struct ovl_apply *a, const void *buf, size_t len);
/* The stream ended: check it ended cleanly, finish (directory times, root
 * opaque emulation, syncfs) and, in layer mode, publish dest.  Return 0
 * and fill *stats (if not NULL), or -errno with ovl_apply_error set. */
OVL_API int ovl_apply_end(struct ovl_apply *a, struct ovl_apply_stats *stats);
/* Why the last call failed: an enum ovl_apply_class, with *entry and *len the
 * raw name of the entry being applied (NULL when none) and *err its errno. */
OVL_API int ovl_apply_error(const struct ovl_apply *a, const char **entry, size_t *len,
			    int *err);
/* The tar-split bytes recorded since the last call (OVL_APPLY_TAR_SPLIT;
 * the format is docs/tar-split.md, before compression): *buf points at
 * them until the next call into a.  Return their length. */
OVL_API size_t ovl_apply_split(struct ovl_apply *a, const void **buf);
/* Free a; an unfinished layer-mode apply removes its temp dir. */
OVL_API void ovl_apply_free(struct ovl_apply *a);

/* Tar headers (tar_write.c) and tar streams of layers (export.c). */

#define OVL_TAR_BLOCK 512
/* typeflags */
#define OVL_TAR_REG	'0'
#define OVL_TAR_LINK	'1'
#define OVL_TAR_SYMLINK	'2'
#define OVL_TAR_CHR	'3'
#define OVL_TAR_BLK	'4'
#define OVL_TAR_DIR	'5'
#define OVL_TAR_FIFO	'6'

struct ovl_tar_xattr {
	const char *name;	/* "security.capability" */
	const void *value;	/* binary-safe */
	size_t size;
};

struct ovl_tar_entry {
	const char *name;	/* archive path: relative, a directory's ends in '/' */
	size_t namelen;
	const char *linkname;	/* symlink target, or the hardlink's first name */
	size_t linklen;
	char type;		/* OVL_TAR_* */
	uint32_t mode;		/* permission bits incl. set-id and sticky, and the
				   S_IFMT bits as moby writes them (st_mode) */
	int64_t uid, gid;
	int64_t size;		/* data bytes that follow (regular files) */
	int64_t mtime;		/* whole seconds */
	uint32_t devmajor, devminor;
	const struct ovl_tar_xattr *xattrs;	/* SCHILY.xattr.* records, in this order */
	size_t nxattrs;
};

/* Encode the header of entry e into buf: a ustar block, after a PAX
 * extended header when a field does not fit ustar (see tar_write.c).
 * Return its length (a multiple of 512; nothing is written when it is more
 * than size: call again with that much room), or -EINVAL (an empty name, a
 * NUL in a name, a negative size, a device number past 07777777). */
OVL_API long ovl_tar_header(const struct ovl_tar_entry *e, void *buf, size_t size);

struct ovl_export;

/* struct ovl_export_opts.flags */
#define OVL_EXPORT_ALL_XATTRS	0x1	/* every xattr but the overlay's private ones */
#define OVL_EXPORT_CLAMP_MTIME	0x2	/* no mtime later than source_date_epoch */

struct ovl_export_opts {
	const char *layer;		/* a layer dir (an upper or diff dir), or NULL */
	struct ovl_stack *stack;	/* or a stack's merged view (kept open by the caller) */
	int xattr_ns;			/* enum ovl_xattr_ns of the layer's overlay xattrs */
	unsigned flags;			/* OVL_EXPORT_* */
	int64_t source_date_epoch;	/* with OVL_EXPORT_CLAMP_MTIME */
};

/* Start a tar stream of a layer dir (whiteouts and opaque directories as
 * OCI ".wh." entries) or of a stack's merged view; see export.c for the
 * rules.  Return 0 and set *out, -EINVAL (neither or both sources), or the
 * error of opening the layer or listing the root. */
OVL_API int ovl_export_open(const struct ovl_export_opts *o, struct ovl_export **out);
/* Fill buf with the next bytes of the archive.  Return how many (less than
 * len only at the end), 0 at the end, or -errno: -EOPNOTSUPP for a layer
 * holding a redirect or a metacopy file, the error of a read otherwise
 * (ovl_export_error names the path).  After an error every call fails. */
OVL_API long ovl_export_read(struct ovl_export *e, void *buf, size_t len);
/* The path an error is about (NULL if none); *reason (if reason is not
 * NULL) "redirect", "metacopy" or NULL. */
OVL_API const char *ovl_export_error(const struct ovl_export *e, const char **reason);
/* Entries (headers) and bytes produced so far. */
OVL_API void ovl_export_stats(const struct ovl_export *e, uint64_t *entries, uint64_t *bytes);
OVL_API void ovl_export_close(struct ovl_export *e);

#ifdef __cplusplus
}
#endif
#endif /* OVL_H */
