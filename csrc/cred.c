/* cred.c - whose rights a change is checked against, and whose it runs with
 * (the kernel's inode.c:ovl_permission, util.c:ovl_override_creds, and the
 * VFS checks in fs/namei.c and fs/attr.c that run on the overlay inode).
 *
 * Like a mount, a stack has two sets of credentials.  The caller's - the
 * calling thread's fsuid, fsgid, supplementary groups and effective
 * capabilities, read at every change - are checked against the merged
 * object and its parents: search on every directory walked, write on the
 * parent of a name made or removed, the sticky bit, ownership for chmod,
 * chown and explicit times.  The work itself (copy-up, whiteouts, xattrs
 * in the layers) then runs with the credentials the stack was opened
 * with, as the kernel uses the mounter's: when the two differ, the thread
 * switches for the duration of the call (per-thread raw syscalls; glibc's
 * wrappers would change every thread of the process).
 *
 * Not modelled: POSIX ACLs (the mode bits decide), the immutable and
 * append-only inode flags, and the protected_symlinks/protected_regular
 * sysctls.  fs.protected_hardlinks is read when the stack opens.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ovl_internal.h"

#define CAP_VERSION_3 0x20080522

struct cap_header {
	uint32_t version;
	int pid;
};

struct cap_data {
	uint32_t effective, permitted, inheritable;
};

static int sys_capget(struct cap_data d[2])
{
	struct cap_header h = { CAP_VERSION_3, 0 };

	return syscall(SYS_capget, &h, d) < 0 ? -errno : 0;
}

static int sys_capset(const struct cap_data d[2])
{
	struct cap_header h = { CAP_VERSION_3, 0 };

	return syscall(SYS_capset, &h, d) < 0 ? -errno : 0;
}

void ovl_cred_release(struct ovl_cred *c)
{
	if (c->groups != c->inline_groups)
		free(c->groups);
	c->groups = c->inline_groups;
	c->ngroups = 0;
}

/* The effective ids, needed only to switch (ovl_cred_current leaves them
 * out: four syscalls are what every change pays). */
int ovl_cred_ids(struct ovl_cred *c)
{
	uid_t ruid, suid;
	gid_t rgid, sgid;

	if (getresuid(&ruid, &c->euid, &suid) < 0 || getresgid(&rgid, &c->egid, &sgid) < 0)
		return -errno;
	return 0;
}

int ovl_cred_current(struct ovl_cred *c)
{
	struct cap_data d[2];
	int n, err;

	c->groups = c->inline_groups;
	c->ngroups = 0;
	/* setfs[ug]id with an invalid id changes nothing and returns the
	 * current one: the only way to read them. */
	c->uid = (uid_t)syscall(SYS_setfsuid, (uid_t)-1);
	c->gid = (gid_t)syscall(SYS_setfsgid, (gid_t)-1);
	err = sys_capget(d);
	if (err)
		return err;
	c->caps = d[0].effective | (uint64_t)d[1].effective << 32;
	c->permitted = d[0].permitted | (uint64_t)d[1].permitted << 32;
	c->inheritable = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
	n = getgroups(OVL_CRED_NGROUPS, c->inline_groups);
	if (n < 0 && errno == EINVAL) {
		n = getgroups(0, NULL);
		if (n > 0) {
			c->groups = malloc(sizeof(gid_t) * (size_t)n);
			if (!c->groups) {
				c->groups = c->inline_groups;
				return -ENOMEM;
			}
			n = getgroups(n, c->groups);
		}
	}
	if (n < 0) {
		err = -errno;
		ovl_cred_release(c);
		return err;
	}
	c->ngroups = n;
	return 0;
}

/* Does the calling thread read the layers as the opener would?  Yes when
 * it has the opener's capabilities and they override every check a read
 * meets (permission bits, trusted.* xattrs, O_NOATIME): then its ids and
 * groups do not matter.  One syscall, where ovl_cred_current takes four. */
bool ovl_cred_reads_as_opener(const struct ovl_stack *s)
{
	const uint64_t all = 1ull << OVL_CAP_DAC_OVERRIDE | 1ull << OVL_CAP_DAC_READ_SEARCH |
			     1ull << OVL_CAP_FOWNER | 1ull << OVL_CAP_SYS_ADMIN;
	struct cap_data d[2];

	if ((s->mounter.caps & all) != all || sys_capget(d) < 0)
		return false;
	return (d[0].effective | (uint64_t)d[1].effective << 32) == s->mounter.caps;
}

/* The same rights on files: fs ids, capabilities, groups. */
bool ovl_cred_same(const struct ovl_cred *a, const struct ovl_cred *b)
{
	return a->uid == b->uid && a->gid == b->gid && a->caps == b->caps &&
	       a->ngroups == b->ngroups &&
	       !memcmp(a->groups, b->groups, sizeof(gid_t) * (size_t)a->ngroups);
}

static int set_ids(const struct ovl_cred *c)
{
	/* Groups first, while the thread may still have CAP_SETGID. */
	if (syscall(SYS_setgroups, (size_t)c->ngroups, c->groups) < 0 ||
	    syscall(SYS_setresgid, (gid_t)-1, c->egid, (gid_t)-1) < 0 ||
	    syscall(SYS_setresuid, (uid_t)-1, c->euid, (uid_t)-1) < 0)
		return -errno;
	/* setresuid set the fs ids to the effective ones. */
	if (c->uid != c->euid)
		syscall(SYS_setfsuid, c->uid);
	if (c->gid != c->egid)
		syscall(SYS_setfsgid, c->gid);
	return 0;
}

static int set_caps(const struct ovl_cred *c)
{
	struct cap_data d[2] = {
		{ (uint32_t)c->caps, (uint32_t)c->permitted, (uint32_t)c->inheritable },
		{ (uint32_t)(c->caps >> 32), (uint32_t)(c->permitted >> 32),
		  (uint32_t)(c->inheritable >> 32) },
	};

	return sys_capset(d);
}

int ovl_cred_enter(const struct ovl_stack *s, struct ovl_cred *caller)
{
	int err;

	if (ovl_cred_same(caller, &s->mounter))
		return 0;
	err = ovl_cred_ids(caller);
	if (err)
		return err;
	/* The effective uid first: back to the opener's (allowed while it is
	 * the real or saved uid), which gives back its capabilities. */
	if (syscall(SYS_setresuid, (uid_t)-1, s->mounter.euid, (uid_t)-1) < 0)
		return -EPERM;
	err = set_ids(&s->mounter);
	if (!err)
		err = set_caps(&s->mounter);
	if (err) {
		ovl_cred_leave(s, caller);
		return -EPERM;
	}
	return 1;
}

void ovl_cred_leave(const struct ovl_stack *s, const struct ovl_cred *caller)
{
	(void)s;
	/* Best effort, in the order that keeps the rights to finish: the
	 * caller's groups and gids, then its uids, then its capabilities. */
	set_ids(caller);
	set_caps(caller);
}

bool ovl_capable(const struct ovl_cred *c, int cap)
{
	return (c->caps >> cap) & 1;
}

bool ovl_in_group(const struct ovl_cred *c, gid_t gid)
{
	if (gid == c->gid)
		return true;
	for (int i = 0; i < c->ngroups; i++)
		if (c->groups[i] == gid)
			return true;
	return false;
}

/* fs/namei.c:generic_permission on the overlay inode's attributes. */
int ovl_permission(const struct ovl_cred *c, const struct stat *st, int mask)
{
	mode_t mode = st->st_mode;

	mask &= OVL_MAY_READ | OVL_MAY_WRITE | OVL_MAY_EXEC;
	if (c->uid == st->st_uid)
		mode >>= 6;
	else if (ovl_in_group(c, st->st_gid))
		mode >>= 3;
	if ((mask & ~mode & 7) == 0)
		return 0;
	if (S_ISDIR(st->st_mode)) {
		if (!(mask & OVL_MAY_WRITE) && ovl_capable(c, OVL_CAP_DAC_READ_SEARCH))
			return 0;
		return ovl_capable(c, OVL_CAP_DAC_OVERRIDE) ? 0 : -EACCES;
	}
	if (mask == OVL_MAY_READ && ovl_capable(c, OVL_CAP_DAC_READ_SEARCH))
		return 0;
	if ((!(mask & OVL_MAY_EXEC) || (st->st_mode & 0111)) &&
	    ovl_capable(c, OVL_CAP_DAC_OVERRIDE))
		return 0;
	return -EACCES;
}

bool ovl_owner_or_capable(const struct ovl_cred *c, const struct stat *st)
{
	return c->uid == st->st_uid || ovl_capable(c, OVL_CAP_FOWNER);
}

/* fs/namei.c:may_delete (the victim exists): write and search on the
 * parent, then the sticky bit. */
int ovl_may_delete(const struct ovl_cred *c, const struct stat *dir, const struct stat *victim)
{
	int err = ovl_permission(c, dir, OVL_MAY_WRITE | OVL_MAY_EXEC);

	if (err)
		return err;
	if ((dir->st_mode & S_ISVTX) && c->uid != victim->st_uid && c->uid != dir->st_uid &&
	    !ovl_capable(c, OVL_CAP_FOWNER))
		return -EPERM;
	return 0;
}

int ovl_may_create(const struct ovl_cred *c, const struct stat *dir)
{
	return ovl_permission(c, dir, OVL_MAY_WRITE | OVL_MAY_EXEC);
}

/* fs/inode.c:mode_strip_sgid: a new file in a setgid directory keeps the
 * setgid bit only for a member of the directory's group. */
mode_t ovl_strip_sgid(const struct ovl_cred *c, const struct stat *dir, mode_t mode)
{
	if ((mode & (S_ISGID | S_IXGRP)) != (S_ISGID | S_IXGRP) || S_ISDIR(mode) ||
	    !(dir->st_mode & S_ISGID))
		return mode;
	if (ovl_in_group(c, dir->st_gid) || ovl_capable(c, OVL_CAP_FSETID))
		return mode;
	return mode & ~(mode_t)S_ISGID;
}

/* fs/inode.c:should_remove_suid: the set-id bits a truncate or a write by
 * this caller clears from a regular file. */
mode_t ovl_kill_suid(const struct ovl_cred *c, mode_t mode)
{
	mode_t kill = 0;

	if (!S_ISREG(mode) || ovl_capable(c, OVL_CAP_FSETID))
		return 0;
	if (mode & S_ISUID)
		kill |= S_ISUID;
	if ((mode & S_ISGID) && (mode & S_IXGRP))
		kill |= S_ISGID;
	return kill;
}

/* fs/namei.c:may_linkat with fs.protected_hardlinks = 1. */
int ovl_may_link(const struct ovl_stack *s, const struct ovl_cred *c, const struct stat *st)
{
	if (!s->protected_hardlinks || ovl_owner_or_capable(c, st))
		return 0;
	if (S_ISREG(st->st_mode) && !(st->st_mode & S_ISUID) &&
	    (st->st_mode & (S_ISGID | S_IXGRP)) != (S_ISGID | S_IXGRP) &&
	    ovl_permission(c, st, OVL_MAY_READ | OVL_MAY_WRITE) == 0)
		return 0;
	return -EPERM;
}

int ovl_read_protected_hardlinks(void)
{
	char buf[8] = "";
	int fd = open("/proc/sys/fs/protected_hardlinks", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 1;	/* the default on every distribution */
	if (read(fd, buf, sizeof(buf) - 1) < 0)
		buf[0] = '1';
	close(fd);
	return buf[0] != '0';
}
