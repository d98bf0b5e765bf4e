/* compat.h - thin shims for syscalls newer than the oldest libc we build with.
 *
 * Every call goes through syscall(2) with the number right on x86_64 and
 * aarch64 (syscalls numbered 424 and up share one table on every
 * architecture).  Availability is probed once per stack (super.c), so a
 * kernel without a call, or a seccomp filter that refuses it, degrades to
 * the older path instead of failing.
 */
#ifndef OVL_COMPAT_H
#define OVL_COMPAT_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef __NR_openat2
#define __NR_openat2 437
#endif
#ifndef __NR_open_tree
#define __NR_open_tree 428
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#endif
#ifndef __NR_mount_setattr
#define __NR_mount_setattr 442
#endif
#ifndef MOUNT_ATTR_NOATIME
#define MOUNT_ATTR_RDONLY 0x00000001
#define MOUNT_ATTR_NOATIME 0x00000010
#endif
#ifndef MOUNT_ATTR_NODEV
#define MOUNT_ATTR_NODEV 0x00000004
#endif
#ifndef MOUNT_ATTR__ATIME
#define MOUNT_ATTR__ATIME 0x00000070
#endif
#ifndef __NR_fchmodat2
#define __NR_fchmodat2 452
#endif
#ifndef __NR_getxattrat
#define __NR_getxattrat 464
#endif
#ifndef __NR_setxattrat
#define __NR_setxattrat 463
#endif
#ifndef __NR_removexattrat
#define __NR_removexattrat 466
#endif
#ifndef __NR_listxattrat
#define __NR_listxattrat 465
#endif

#ifndef RESOLVE_NO_XDEV
#define RESOLVE_NO_XDEV 0x01
#define RESOLVE_NO_MAGICLINKS 0x02
#define RESOLVE_NO_SYMLINKS 0x04
#define RESOLVE_BENEATH 0x08
#define RESOLVE_IN_ROOT 0x10
#define RESOLVE_CACHED 0x20
#endif

struct ovl_open_how {
	uint64_t flags;
	uint64_t mode;
	uint64_t resolve;
};

struct ovl_xattr_args {
	uint64_t value;
	uint32_t size;
	uint32_t flags;
};

/* Return a file descriptor or -errno. */
static inline int ovl_sys_openat2(int dfd, const char *path, uint64_t flags,
				  uint64_t resolve)
{
	struct ovl_open_how how = { .flags = flags, .mode = 0, .resolve = resolve };
	long r = syscall(__NR_openat2, dfd, path, &how, sizeof(how));

	return r < 0 ? -errno : (int)r;
}

struct ovl_mount_attr {
	uint64_t attr_set;
	uint64_t attr_clr;
	uint64_t propagation;
	uint64_t userns_fd;
};

/* Make the mount at fd (a detached clone of our own) read-only and
 * noatime, as the kernel makes its lower layers' private mounts
 * (super.c:ovl_get_layers), and with nodev also nodev.  Return 0 or -errno
 * (ENOSYS before 5.12). */
static inline int ovl_sys_mount_lower(int fd, int nodev)
{
	struct ovl_mount_attr a = { .attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOATIME |
						(nodev ? MOUNT_ATTR_NODEV : 0),
				    .attr_clr = MOUNT_ATTR__ATIME };
	long r = syscall(__NR_mount_setattr, fd, "", AT_EMPTY_PATH, &a, sizeof(a));

	return r < 0 ? -errno : 0;
}

/* A detached clone of the mount at dfd/path without its submounts (like
 * a non-recursive bind mount).  Return an fd or -errno. */
static inline int ovl_sys_open_tree_clone(int dfd, const char *path, unsigned flags)
{
	long r = syscall(__NR_open_tree, dfd, path,
			 OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | flags);

	return r < 0 ? -errno : (int)r;
}

/* Return the value length or -errno. */
/* fchmodat2(2) (6.6): chmod with AT_SYMLINK_NOFOLLOW.  0 or -errno
 * (-ENOSYS before 6.6). */
static inline int ovl_sys_fchmodat2(int dfd, const char *path, mode_t mode, int at_flags)
{
	long r = syscall(__NR_fchmodat2, dfd, path, mode, at_flags);

	return r < 0 ? -errno : 0;
}

static inline long ovl_sys_getxattrat(int dfd, const char *path, unsigned at_flags,
				      const char *name, void *buf, size_t size)
{
	struct ovl_xattr_args args = {
		.value = (uint64_t)(uintptr_t)buf, .size = (uint32_t)size, .flags = 0,
	};
	long r = syscall(__NR_getxattrat, dfd, path, at_flags, name, &args,
			 sizeof(args));

	return r < 0 ? -errno : r;
}

/* Return 0 or -errno. */
static inline int ovl_sys_setxattrat(int dfd, const char *path, unsigned at_flags,
				     const char *name, const void *value, size_t size,
				     unsigned xflags)
{
	struct ovl_xattr_args args = {
		.value = (uint64_t)(uintptr_t)value, .size = (uint32_t)size, .flags = xflags,
	};
	long r = syscall(__NR_setxattrat, dfd, path, at_flags, name, &args, sizeof(args));

	return r < 0 ? -errno : 0;
}

/* Return 0 or -errno. */
static inline int ovl_sys_removexattrat(int dfd, const char *path, unsigned at_flags,
					const char *name)
{
	long r = syscall(__NR_removexattrat, dfd, path, at_flags, name);

	return r < 0 ? -errno : 0;
}

/* Return the list length or -errno. */
static inline long ovl_sys_listxattrat(int dfd, const char *path, unsigned at_flags,
				       char *buf, size_t size)
{
	long r = syscall(__NR_listxattrat, dfd, path, at_flags, buf, size);

	return r < 0 ? -errno : r;
}

#endif /* OVL_COMPAT_H */
