# Declarations of the C core's public API (csrc/ovl.h).  Every call can run
# without the GIL.
from posix.stat cimport struct_stat
from posix.types cimport mode_t, dev_t, uid_t, gid_t, off_t
from posix.time cimport timespec
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

cdef extern from "ovl.h" nogil:
    struct ovl_stack:
        pass

    enum:
        OVL_WHITEOUT_KERNEL
        OVL_WHITEOUT_OCI
        OVL_WHITEOUT_AUTO
        OVL_XATTR_TRUSTED
        OVL_XATTR_USER
        OVL_CFG_NO_CACHE
        OVL_CFG_METACOPY
        OVL_CFG_REDIRECT_NOFOLLOW
        OVL_CFG_VOLATILE
        OVL_CFG_REDIRECT_DIR
        OVL_CFG_DEVICES
        OVL_COPY_NONE
        OVL_COPY_CLONE
        OVL_COPY_CFR
        OVL_COPY_SENDFILE
        OVL_COPY_RW
        OVL_LOOKUP_FOLLOW
        OVL_LOOKUP_CACHED
        OVL_INFO_MERGED
        OVL_INFO_METACOPY
        OVL_INFO_OPAQUE
        OVL_LAYER_NONE
        OVL_LAYER_WORK

    struct ovl_config:
        const char *const *lowers
        size_t nlowers
        const char *upper
        const char *work
        const char *const *data_layers
        size_t ndata
        int xattr_ns
        int whiteouts
        unsigned flags
        size_t cache_max_bytes

    struct ovl_open_error:
        int layer
        int other
        bint inside

    struct ovl_error_detail:
        int layer
        const char *reason
        char path[256]
        char value[256]

    struct ovl_info:
        struct_stat st
        int layer
        int data_layer
        unsigned flags

    struct ovl_dirent:
        const char *name
        uint64_t ino
        uint32_t namelen
        uint16_t layer
        uint8_t d_type

    struct ovl_dirlist:
        size_t n
        uint64_t generation
        ovl_dirent *ents

    struct ovl_cstats "ovl_cache_stats":
        uint64_t hits
        uint64_t misses
        uint64_t entries
        uint64_t dirs
        uint64_t bytes
        uint64_t max_bytes
        uint64_t generation
        uint64_t flushes

    int ovl_stack_open(const ovl_config *cfg, ovl_stack **out, ovl_open_error *err)
    void ovl_stack_close(ovl_stack *s)
    int ovl_last_error(const ovl_stack *s, int err, ovl_error_detail *out)
    int ovl_lookup(ovl_stack *s, const char *path, unsigned flags, ovl_info *out)
    long ovl_realpath(ovl_stack *s, const char *path, unsigned flags, int want_data,
                      char *buf, size_t bufsize, int *layer)
    long ovl_readlink(ovl_stack *s, const char *path, char *buf, size_t bufsize)
    int ovl_open(ovl_stack *s, const char *path, int oflags)
    int ovl_listdir(ovl_stack *s, const char *path, unsigned flags, ovl_dirlist **out)
    void ovl_dirlist_free(ovl_dirlist *l)
    long ovl_getxattr(ovl_stack *s, const char *path, unsigned flags, const char *name,
                      void *buf, size_t size)
    long ovl_listxattr(ovl_stack *s, const char *path, unsigned flags, char *buf,
                       size_t size)
    void ovl_cache_stats(ovl_stack *s, ovl_cstats *out)
    uint64_t ovl_cache_generation(const ovl_stack *s)
    int ovl_invalidate(ovl_stack *s, const char *path)
    int ovl_copy_up(ovl_stack *s, const char *path, unsigned flags)
    int ovl_unlink(ovl_stack *s, const char *path)
    int ovl_rmdir(ovl_stack *s, const char *path)
    int ovl_mkdir(ovl_stack *s, const char *path, mode_t mode)
    int ovl_mknod(ovl_stack *s, const char *path, mode_t mode, dev_t dev)
    int ovl_symlink(ovl_stack *s, const char *target, const char *path)
    int ovl_chmod(ovl_stack *s, const char *path, unsigned flags, mode_t mode)
    int ovl_chown(ovl_stack *s, const char *path, unsigned flags, uid_t uid, gid_t gid)
    int ovl_utimens(ovl_stack *s, const char *path, unsigned flags, const timespec *ts)
    int ovl_truncate(ovl_stack *s, const char *path, off_t length)
    int ovl_setxattr(ovl_stack *s, const char *path, unsigned flags, const char *name,
                     const void *value, size_t size, int xflags)
    int ovl_removexattr(ovl_stack *s, const char *path, unsigned flags, const char *name)
    int ovl_open_write(ovl_stack *s, const char *path, int oflags, mode_t mode)
    int ovl_rename(ovl_stack *s, const char *src, const char *dst)
    int ovl_link(ovl_stack *s, const char *src, const char *dst)


# Applying a layer tar (csrc/apply.c).
cdef extern from "ovl.h" nogil:
    struct ovl_apply:
        pass

    enum:
        OVL_APPLY_LAYER
        OVL_APPLY_ROOTFS
        OVL_APPLY_SAME_OWNER
        OVL_APPLY_DEVICES
        OVL_APPLY_NO_SYNC
        OVL_APPLY_XATTR_WHITEOUTS
        OVL_APPLY_TAR_SPLIT
        OVL_APPLY_E_NONE
        OVL_APPLY_E_CORRUPT
        OVL_APPLY_E_TRUNCATED
        OVL_APPLY_E_UNSAFE
        OVL_APPLY_E_WHITEOUT
        OVL_APPLY_E_CONFLICT
        OVL_APPLY_E_TOO_LARGE
        OVL_APPLY_E_IO

    struct ovl_apply_config:
        const char *dest
        const char *const *lowers
        size_t nlowers
        int mode
        int xattr_ns
        unsigned flags
        uint64_t max_size

    struct ovl_apply_stats:
        uint64_t bytes
        uint64_t entries
        uint64_t files, dirs, symlinks, hardlinks, devices, fifos
        uint64_t whiteouts, opaques
        uint64_t skipped
        uint64_t copied_up
        uint64_t data_bytes

    int ovl_apply_begin(const ovl_apply_config *cfg, ovl_apply **out)
    int ovl_apply_feed(ovl_apply *a, const void *buf, size_t len)
    int ovl_apply_end(ovl_apply *a, ovl_apply_stats *stats)
    int ovl_apply_error(const ovl_apply *a, const char **entry, size_t *len, int *err)
    size_t ovl_apply_split(ovl_apply *a, const void **buf)
    void ovl_apply_free(ovl_apply *a)
# Tar headers and layer tar streams (csrc/tar_write.c, csrc/export.c).
cdef extern from "ovl.h" nogil:
    enum:
        OVL_TAR_BLOCK
        OVL_EXPORT_ALL_XATTRS
        OVL_EXPORT_CLAMP_MTIME
    struct ovl_tar_xattr:
        const char *name
        const void *value
        size_t size
    struct ovl_tar_entry:
        const char *name
        size_t namelen
        const char *linkname
        size_t linklen
        char type
        uint32_t mode
        int64_t uid, gid, size, mtime
        uint32_t devmajor, devminor
        const ovl_tar_xattr *xattrs
        size_t nxattrs
    long ovl_tar_header(const ovl_tar_entry *e, void *buf, size_t size)
    struct ovl_export:
        pass
    struct ovl_export_opts:
        const char *layer
        ovl_stack *stack
        int xattr_ns
        unsigned flags
        int64_t source_date_epoch
    int ovl_export_open(const ovl_export_opts *o, ovl_export **out)
    long ovl_export_read(ovl_export *e, void *buf, size_t len)
    const char *ovl_export_error(const ovl_export *e, const char **reason)
    void ovl_export_stats(const ovl_export *e, uint64_t *entries, uint64_t *bytes)
    void ovl_export_close(ovl_export *e)
