/* fill.c - the cache's record of a looked-up name's metadata (struct
 * ovl_fill): a struct stat in a compact encoding, typically 25-35 bytes
 * instead of 144, stored in the directory's arena (or malloc'd for a
 * directory's own), and read back as a struct stat on every lookup.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ovl_internal.h"

/* Metadata encoding: a mask byte saying which fields differ from their
 * usual value, then LEB128 varints; times are nanoseconds, atime and ctime
 * as differences from mtime.  Times that do not fit in 64-bit nanoseconds
 * are stored as seconds and nanoseconds instead. */
enum {
	M_NLINK = 0x01,		/* nlink != 1 */
	M_UID = 0x02,		/* uid != 0 */
	M_GID = 0x04,		/* gid != 0 */
	M_RDEV = 0x08,		/* rdev != 0 */
	M_BLKSIZE = 0x10,	/* blksize != 4096 */
	M_ATIME = 0x20,		/* atime != mtime */
	M_CTIME = 0x40,		/* ctime != mtime */
	M_WIDE = 0x80,		/* times as (seconds, nanoseconds) */
};

static uint8_t *put_u(uint8_t *p, uint64_t v)
{
	while (v >= 0x80) {
		*p++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*p++ = (uint8_t)v;
	return p;
}

static uint8_t *put_s(uint8_t *p, int64_t v)
{
	return put_u(p, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63));
}

static const uint8_t *get_u(const uint8_t *p, uint64_t *v)
{
	uint64_t r = 0;
	unsigned shift = 0;

	while (*p & 0x80) {
		r |= (uint64_t)(*p++ & 0x7f) << shift;
		shift += 7;
	}
	*v = r | ((uint64_t)*p++ << shift);
	return p;
}

static const uint8_t *get_s(const uint8_t *p, int64_t *v)
{
	uint64_t u;

	p = get_u(p, &u);
	*v = (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
	return p;
}

static bool to_ns(const struct timespec *ts, int64_t *ns)
{
	return !__builtin_mul_overflow((int64_t)ts->tv_sec, (int64_t)1000000000, ns) &&
	       !__builtin_add_overflow(*ns, (int64_t)ts->tv_nsec, ns);
}

static void from_ns(int64_t ns, struct timespec *ts)
{
	ts->tv_sec = ns / 1000000000;
	ts->tv_nsec = ns % 1000000000;
	if (ts->tv_nsec < 0) {
		ts->tv_nsec += 1000000000;
		ts->tv_sec--;
	}
}

static size_t stat_encode(const struct stat *st, uint8_t *out)
{
	int64_t a, m, c, da = 0, dc = 0;
	uint8_t mask = 0, *p = out + 1;
	bool narrow = to_ns(&st->st_atim, &a) && to_ns(&st->st_mtim, &m) &&
		      to_ns(&st->st_ctim, &c) && !__builtin_sub_overflow(a, m, &da) &&
		      !__builtin_sub_overflow(c, m, &dc);

	p = put_u(p, st->st_mode);
	if (st->st_nlink != 1) {
		mask |= M_NLINK;
		p = put_u(p, st->st_nlink);
	}
	if (st->st_uid) {
		mask |= M_UID;
		p = put_u(p, st->st_uid);
	}
	if (st->st_gid) {
		mask |= M_GID;
		p = put_u(p, st->st_gid);
	}
	if (st->st_rdev) {
		mask |= M_RDEV;
		p = put_u(p, st->st_rdev);
	}
	if (st->st_blksize != 4096) {
		mask |= M_BLKSIZE;
		p = put_u(p, (uint64_t)st->st_blksize);
	}
	p = put_u(p, (uint64_t)st->st_size);
	p = put_u(p, (uint64_t)st->st_blocks);
	if (narrow) {
		p = put_s(p, m);
		if (da) {
			mask |= M_ATIME;
			p = put_s(p, da);
		}
		if (dc) {
			mask |= M_CTIME;
			p = put_s(p, dc);
		}
	} else {
		mask |= M_WIDE;
		p = put_s(p, st->st_atim.tv_sec);
		p = put_u(p, (uint64_t)st->st_atim.tv_nsec);
		p = put_s(p, st->st_mtim.tv_sec);
		p = put_u(p, (uint64_t)st->st_mtim.tv_nsec);
		p = put_s(p, st->st_ctim.tv_sec);
		p = put_u(p, (uint64_t)st->st_ctim.tv_nsec);
	}
	out[0] = mask;
	return (size_t)(p - out);
}

/* Bytes a fill of st with extra bytes after it takes. */
size_t ovl_fill_size(const struct stat *st, size_t extra)
{
	uint8_t buf[OVL_STAT_MAX];

	return ((1 + stat_encode(st, buf) + 7) & ~(size_t)7) + extra;
}

/* Store st (and room for extra bytes after it) in the arena, or with
 * malloc when a is NULL. */
struct ovl_fill *ovl_fill_new(struct ovl_arena *a, const struct stat *st, size_t extra)
{
	uint8_t buf[OVL_STAT_MAX];
	size_t len = stat_encode(st, buf);
	size_t off = (1 + len + 7) & ~(size_t)7;
	struct ovl_fill *f = a ? ovl_arena_alloc(a, off + extra) : malloc(off + extra);

	if (f) {
		f->len = (uint8_t)len;
		memcpy(f->data, buf, len);
	}
	return f;
}

/* Decode a fill's metadata into st (fields other than dev and ino). */
void ovl_fill_stat(const struct ovl_fill *f, struct stat *st)
{
	const uint8_t *p = f->data + 1;
	uint8_t mask = f->data[0];
	uint64_t u;
	int64_t m, d;

	p = get_u(p, &u);
	st->st_mode = (mode_t)u;
	st->st_nlink = 1;
	if (mask & M_NLINK) {
		p = get_u(p, &u);
		st->st_nlink = (nlink_t)u;
	}
	st->st_uid = 0;
	if (mask & M_UID) {
		p = get_u(p, &u);
		st->st_uid = (uid_t)u;
	}
	st->st_gid = 0;
	if (mask & M_GID) {
		p = get_u(p, &u);
		st->st_gid = (gid_t)u;
	}
	st->st_rdev = 0;
	if (mask & M_RDEV) {
		p = get_u(p, &u);
		st->st_rdev = (dev_t)u;
	}
	st->st_blksize = 4096;
	if (mask & M_BLKSIZE) {
		p = get_u(p, &u);
		st->st_blksize = (blksize_t)u;
	}
	p = get_u(p, &u);
	st->st_size = (off_t)u;
	p = get_u(p, &u);
	st->st_blocks = (blkcnt_t)u;
	if (!(mask & M_WIDE)) {
		p = get_s(p, &m);
		from_ns(m, &st->st_mtim);
		d = 0;
		if (mask & M_ATIME)
			p = get_s(p, &d);
		from_ns(m + d, &st->st_atim);
		d = 0;
		if (mask & M_CTIME)
			p = get_s(p, &d);
		from_ns(m + d, &st->st_ctim);
	} else {
		struct timespec *t[3] = { &st->st_atim, &st->st_mtim, &st->st_ctim };

		for (int i = 0; i < 3; i++) {
			p = get_s(p, &m);
			t[i]->tv_sec = (time_t)m;
			p = get_u(p, &u);
			t[i]->tv_nsec = (long)u;
		}
	}
}

/* A filled symlink's target. */
const char *ovl_ent_target(const struct ovl_ent *e)
{
	return ovl_fill_extra(e->ext);
}

/* The overlay's attributes of a looked-up entry (node: its directory). */
void ovl_ent_attr(const struct ovl_dir *node, const struct ovl_ent *e, struct stat *st)
{
	ovl_fill_stat(node ? node->fill : (const struct ovl_fill *)e->ext, st);
}

/* The error of a metacopy file e of directory d whose data the lookup did
 * not find (struct ovl_mcdata.err, nonzero: its path holds the redirect
 * that found none), with the detail for ovl_last_error.  Return it. */
int ovl_mc_error(const struct ovl_stack *s, const struct ovl_dir *d, const struct ovl_ent *e)
{
	const struct ovl_mcdata *mc = ovl_fill_extra(e->ext);

	return ovl_error(s, mc->err, d->stack[e->top].layer,
			 "metacopy file whose redirect leads to no regular file in the "
			 "data-only layers", ovl_dl_path(d, e->top), e->name, mc->path,
			 strlen(mc->path));
}
