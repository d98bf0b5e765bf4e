/* tar.c - a streaming tar reader: bytes in, entries out, no I/O.
 *
 * A push parser (ovl_tar_feed takes any chunk, down to one byte) for what
 * container layers hold: ustar and v7 headers, PAX extended headers ('x')
 * with path, linkpath, size, uid, gid, mtime, atime and SCHILY.xattr.*
 * records (values are binary-safe: PAX records are length-prefixed), GNU
 * long names and link names ('L', 'K'), GNU sparse files (old GNU 'S' with
 * its extension blocks, and PAX sparse 0.0, 0.1 and 1.0), base-256
 * numbers.  Readers disagree on the edges; these are the rules, Go's
 * archive/tar's (what docker and containerd run) where it has one:
 *
 * - every header's checksum is verified (unsigned or signed sum); a bad one
 *   anywhere is corruption (-EBADMSG), never a silent end of the archive as
 *   Python's tarfile makes it;
 * - PAX global headers ('g') are ignored, never applied (Go); their bytes
 *   still go to the next entry's raw header (tar-split);
 * - links, symlinks, devices, directories and fifos carry no data whatever
 *   their size field says (Go's isHeaderOnlyType);
 * - the end is a zero block; the next must be zero too (one zero block and
 *   then a header is corruption).  The stream may also end cleanly at a
 *   header boundary without zero blocks, or after one (Go, GNU tar);
 * - after the end, the rest of the stream (blocking padding) must be zeros:
 *   a non-zero byte there is corruption, found as it arrives;
 * - the stream ending inside a header, an extension or data is truncation
 *   (ovl_tar_finish: -ENODATA);
 * - extension headers (PAX, GNU long names) are limited to 1 MiB each
 *   (Go's maxSpecialFileSize) and sparse maps to 1 Mi segments (-E2BIG);
 *   extension headers with no entry after them are corruption;
 * - unknown entry types are refused (-EBADMSG), except a GNU volume label
 *   ('V'), which is skipped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ovl_internal.h"

#define BLK 512
#define EXT_MAX (1u << 20)
#define SPARSE_MAX (1u << 20)

enum tar_state {
	ST_HEADER,	/* collecting a 512-byte header */
	ST_EXT,		/* collecting a PAX / GNU long name body */
	ST_SPARSE_EXT,	/* old GNU sparse extension blocks */
	ST_SPARSE_MAP,	/* PAX 1.0 sparse map at the start of the data */
	ST_DATA,	/* entry data to hand out */
	ST_SKIP,	/* data to skip (volume labels) */
	ST_PAD,		/* padding to the block boundary */
	ST_ZERO1,	/* one zero block seen: the next must be zero */
	ST_TRAILER,	/* after the end: zeros only */
	ST_FAILED,
};

/* What extension headers said about the next entry. */
struct tar_pending {
	char *path, *linkpath, *sparse_name;
	size_t pathlen, linklen, sparse_namelen;
	bool has_size, has_uid, has_gid, has_mtime, has_atime;
	uint64_t size, uid, gid;
	struct timespec mtime, atime;
	int sparse_major, sparse_minor;		/* -1: none */
	bool has_realsize;
	uint64_t realsize;
	struct ovl_tar_seg *segs;		/* PAX 0.0 / 0.1 maps */
	size_t nsegs, capsegs;
	uint64_t pending_off;			/* PAX 0.0: an offset waiting for numbytes */
	bool has_pending_off;
	struct ovl_tar_member_xattr *xattrs;
	size_t nxattrs, capxattrs;
};

struct ovl_tar {
	const struct ovl_tar_ops *ops;
	void *ctx;
	enum tar_state state;
	uint8_t blk[BLK];
	size_t blen;		/* bytes in blk */
	uint8_t ext_type;	/* 'x', 'g', 'L', 'K' */
	uint8_t *ext;		/* body being collected */
	size_t ext_len, ext_want, ext_total;	/* ext_total: with padding */
	uint64_t left;		/* data or padding bytes left */
	uint64_t data_total;	/* archive data bytes of the entry */
	size_t seg;		/* sparse: current segment */
	uint64_t seg_left;	/* bytes left in it */
	uint64_t off;		/* offset in the file of the next data byte */
	char *map;		/* PAX 1.0 map text */
	size_t map_len, map_cap;
	bool record;		/* keep raw header bytes (tar-split) */
	uint8_t *raw;
	size_t raw_len, raw_cap;
	bool in_entry;		/* an entry was handed out and not ended */
	bool ext_pending;	/* extension headers wait for their entry */
	struct tar_pending p;
	struct ovl_tar_member e;
	uint64_t consumed;
	int err;
};

static int fail(struct ovl_tar *t, int err)
{
	t->state = ST_FAILED;
	t->err = err;
	return err;
}

static int grow(void **buf, size_t *cap, size_t need, size_t elem)
{
	size_t ncap = *cap ? *cap : 16;
	void *nb;

	if (need <= *cap)
		return 0;
	while (ncap < need)
		ncap *= 2;
	nb = realloc(*buf, ncap * elem);
	if (!nb)
		return -ENOMEM;
	*buf = nb;
	*cap = ncap;
	return 0;
}

static int raw_append(struct ovl_tar *t, const void *p, size_t n)
{
	int err;

	if (!t->record)
		return 0;
	err = grow((void **)&t->raw, &t->raw_cap, t->raw_len + n, 1);
	if (err)
		return err;
	memcpy(t->raw + t->raw_len, p, n);
	t->raw_len += n;
	return 0;
}

static void pending_clear(struct tar_pending *p)
{
	free(p->path);
	free(p->linkpath);
	free(p->sparse_name);
	free(p->segs);
	for (size_t i = 0; i < p->nxattrs; i++) {
		free(p->xattrs[i].name);
		free(p->xattrs[i].value);
	}
	free(p->xattrs);
	memset(p, 0, sizeof(*p));
	p->sparse_major = p->sparse_minor = -1;
}

static bool is_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* A numeric header field: octal (spaces and NULs around it), or base-256
 * when the first byte has its top bit set (0xff: negative).  Return 0 or
 * -EBADMSG. */
static int parse_num(const uint8_t *f, size_t n, int64_t *out, bool allow_neg)
{
	uint64_t v = 0;
	size_t i = 0;

	if (f[0] & 0x80) {
		bool neg = f[0] == 0xff;

		if (neg && !allow_neg)
			return -EBADMSG;
		v = neg ? ~(uint64_t)0 : (uint64_t)(f[0] & 0x7f);
		for (i = 1; i < n; i++) {
			if (!neg && (v >> 55))
				return -EBADMSG;
			v = (v << 8) | f[i];
		}
		if (!neg && (v >> 63))
			return -EBADMSG;
		*out = (int64_t)v;
		return 0;
	}
	while (i < n && (f[i] == ' ' || f[i] == 0))
		i++;
	for (; i < n && f[i] >= '0' && f[i] <= '7'; i++) {
		if (v >> 60)
			return -EBADMSG;
		v = v * 8 + (uint64_t)(f[i] - '0');
	}
	for (; i < n; i++)
		if (f[i] != ' ' && f[i] != 0)
			return -EBADMSG;
	*out = (int64_t)v;
	return 0;
}

static int parse_unum(const uint8_t *f, size_t n, uint64_t *out)
{
	int64_t v;
	int err = parse_num(f, n, &v, false);

	*out = (uint64_t)v;
	return err;
}

/* A decimal number of a PAX record or sparse map, the whole of s[0..n). */
static int parse_dec(const char *s, size_t n, uint64_t *out)
{
	uint64_t v = 0;

	if (!n)
		return -EBADMSG;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9' || v > (UINT64_MAX - 9) / 10)
			return -EBADMSG;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return 0;
}

/* A PAX time: [-]seconds[.fraction]. */
static int parse_time(const char *s, size_t n, struct timespec *ts)
{
	bool neg = n && s[0] == '-';
	const char *dot;
	uint64_t sec;
	long nsec = 0;
	size_t i, ilen;
	int err;

	if (neg) {
		s++;
		n--;
	}
	dot = memchr(s, '.', n);
	ilen = dot ? (size_t)(dot - s) : n;
	err = parse_dec(s, ilen, &sec);
	if (err || sec > (uint64_t)INT64_MAX)
		return -EBADMSG;
	if (dot) {
		long scale = 100000000;

		for (i = ilen + 1; i < n; i++) {
			if (s[i] < '0' || s[i] > '9')
				return -EBADMSG;
			nsec += (s[i] - '0') * scale;
			scale /= 10;
		}
	}
	if (neg) {
		ts->tv_sec = -(time_t)sec;
		ts->tv_nsec = 0;
		if (nsec) {
			ts->tv_sec--;
			ts->tv_nsec = 1000000000 - nsec;
		}
	} else {
		ts->tv_sec = (time_t)sec;
		ts->tv_nsec = nsec;
	}
	return 0;
}

static int add_seg(struct tar_pending *p, uint64_t off, uint64_t len)
{
	int err;

	if (p->nsegs >= SPARSE_MAX)
		return -E2BIG;
	err = grow((void **)&p->segs, &p->capsegs, p->nsegs + 1, sizeof(*p->segs));
	if (err)
		return err;
	p->segs[p->nsegs].off = off;
	p->segs[p->nsegs].len = len;
	p->nsegs++;
	return 0;
}

/* "off,len,off,len,..." (PAX sparse 0.1) */
static int parse_map01(struct tar_pending *p, const char *s, size_t n)
{
	size_t i = 0, nfield = 0;
	uint64_t off = 0, v;
	int err;

	p->nsegs = 0;
	if (!n)
		return 0;
	while (i <= n) {
		const char *c = memchr(s + i, ',', n - i);
		size_t end = c ? (size_t)(c - s) : n;

		err = parse_dec(s + i, end - i, &v);
		if (err)
			return err;
		if (nfield++ & 1) {
			err = add_seg(p, off, v);
			if (err)
				return err;
		} else {
			off = v;
		}
		i = end + 1;
	}
	return nfield & 1 ? -EBADMSG : 0;
}

static int dupmem(char **out, size_t *outlen, const char *s, size_t n)
{
	char *d = malloc(n + 1);

	if (!d)
		return -ENOMEM;
	memcpy(d, s, n);
	d[n] = 0;
	free(*out);
	*out = d;
	if (outlen)
		*outlen = n;
	return 0;
}

static int pax_record(struct tar_pending *p, const char *k, size_t klen,
		      const char *v, size_t vlen)
{
#define KEY(s) (klen == sizeof(s) - 1 && !memcmp(k, s, klen))
	uint64_t n;
	int err;

	if (KEY("path"))
		return dupmem(&p->path, &p->pathlen, v, vlen);
	if (KEY("linkpath"))
		return dupmem(&p->linkpath, &p->linklen, v, vlen);
	if (KEY("size")) {
		p->has_size = true;
		return parse_dec(v, vlen, &p->size);
	}
	if (KEY("uid")) {
		p->has_uid = true;
		return parse_dec(v, vlen, &p->uid);
	}
	if (KEY("gid")) {
		p->has_gid = true;
		return parse_dec(v, vlen, &p->gid);
	}
	if (KEY("mtime")) {
		p->has_mtime = true;
		return parse_time(v, vlen, &p->mtime);
	}
	if (KEY("atime")) {
		p->has_atime = true;
		return parse_time(v, vlen, &p->atime);
	}
	if (klen > 13 && !memcmp(k, "SCHILY.xattr.", 13)) {
		struct ovl_tar_member_xattr *x;

		if (klen - 13 > 255 || memchr(k + 13, 0, klen - 13))
			return -EBADMSG;
		for (size_t i = 0; i < p->nxattrs; i++) {
			x = &p->xattrs[i];
			if (!strncmp(x->name, k + 13, klen - 13) && !x->name[klen - 13])
				return dupmem(&x->value, &x->len, v, vlen);	/* last wins */
		}
		err = grow((void **)&p->xattrs, &p->capxattrs, p->nxattrs + 1,
			   sizeof(*p->xattrs));
		if (err)
			return err;
		x = &p->xattrs[p->nxattrs];
		memset(x, 0, sizeof(*x));
		err = dupmem(&x->name, NULL, k + 13, klen - 13);
		if (!err)
			err = dupmem(&x->value, &x->len, v, vlen);
		p->nxattrs++;
		return err;
	}
	if (KEY("GNU.sparse.major") || KEY("GNU.sparse.minor")) {
		err = parse_dec(v, vlen, &n);
		if (err || n > 1)
			return -EBADMSG;
		if (k[11] == 'm' && k[12] == 'a')
			p->sparse_major = (int)n;
		else
			p->sparse_minor = (int)n;
		return 0;
	}
	if (KEY("GNU.sparse.name"))
		return dupmem(&p->sparse_name, &p->sparse_namelen, v, vlen);
	if (KEY("GNU.sparse.realsize") || KEY("GNU.sparse.size")) {
		p->has_realsize = true;
		return parse_dec(v, vlen, &p->realsize);
	}
	if (KEY("GNU.sparse.numblocks")) {
		if (p->sparse_major < 0)
			p->sparse_major = p->sparse_minor = 0;
		return parse_dec(v, vlen, &n);
	}
	if (KEY("GNU.sparse.offset")) {
		if (p->sparse_major < 0)
			p->sparse_major = p->sparse_minor = 0;
		p->has_pending_off = true;
		return parse_dec(v, vlen, &p->pending_off);
	}
	if (KEY("GNU.sparse.numbytes")) {
		if (!p->has_pending_off)
			return -EBADMSG;
		p->has_pending_off = false;
		err = parse_dec(v, vlen, &n);
		return err ? err : add_seg(p, p->pending_off, n);
	}
	if (KEY("GNU.sparse.map")) {
		if (p->sparse_major < 0) {
			p->sparse_major = 0;
			p->sparse_minor = 1;
		}
		return parse_map01(p, v, vlen);
	}
	return 0;	/* uname, gname, ctime, comment, others: not kept */
#undef KEY
}

/* Parse a PAX body of records "LEN KEY=VALUE\n". */
static int parse_pax(struct tar_pending *p, const char *s, size_t n, bool global)
{
	size_t i = 0;

	while (i < n) {
		uint64_t len = 0;
		size_t j = i;
		const char *eq;
		int err;

		if (!s[i] && is_zero((const uint8_t *)s + i, n - i))
			break;	/* NUL padding of some writers */
		while (j < n && s[j] >= '0' && s[j] <= '9') {
			len = len * 10 + (uint64_t)(s[j] - '0');
			if (len > n)
				return -EBADMSG;
			j++;
		}
		if (j == i || j >= n || s[j] != ' ' || len > n - i || len < (j - i) + 3 ||
		    s[i + len - 1] != '\n')
			return -EBADMSG;
		j++;
		eq = memchr(s + j, '=', i + len - 1 - j);
		if (!eq || eq == s + j)
			return -EBADMSG;
		if (!global) {
			err = pax_record(p, s + j, (size_t)(eq - (s + j)), eq + 1,
					 (size_t)(s + i + len - 1 - (eq + 1)));
			if (err)
				return err;
		}
		i += len;
	}
	return 0;
}

static int verify_checksum(const uint8_t *b)
{
	int64_t want;
	uint64_t usum = 0;
	int64_t ssum = 0;

	if (parse_num(b + 148, 8, &want, false))
		return -EBADMSG;
	for (int i = 0; i < BLK; i++) {
		uint8_t c = (i >= 148 && i < 156) ? ' ' : b[i];

		usum += c;
		ssum += (int8_t)c;
	}
	return ((int64_t)usum == want || ssum == want) ? 0 : -EBADMSG;
}

/* A NUL-terminated field of at most n bytes. */
static size_t field_len(const uint8_t *f, size_t n)
{
	const uint8_t *z = memchr(f, 0, n);

	return z ? (size_t)(z - f) : n;
}

static void entry_clear(struct ovl_tar *t)
{
	free(t->e.name);
	free(t->e.linkname);
	memset(&t->e, 0, sizeof(t->e));
}

/* Old GNU sparse entries: 4 in the header at 386, 21 per extension block. */
static int gnu_sparse_array(struct tar_pending *p, const uint8_t *a, int n)
{
	for (int i = 0; i < n; i++) {
		uint64_t off, len;

		if (!a[i * 24])
			break;
		if (parse_unum(a + i * 24, 12, &off) || parse_unum(a + i * 24 + 12, 12, &len))
			return -EBADMSG;
		if (add_seg(p, off, len))
			return -E2BIG;
	}
	return 0;
}

/* The sparse map must be in order, not overlap and end inside the file;
 * its lengths add up to the archive data.  Return 0 or -EBADMSG. */
static int check_map(const struct ovl_tar_member *e)
{
	uint64_t pos = 0, sum = 0;

	for (size_t i = 0; i < e->nsparse; i++) {
		const struct ovl_tar_seg *s = &e->sparse[i];

		if (s->off < pos || s->len > UINT64_MAX - s->off || s->off + s->len > e->size)
			return -EBADMSG;
		pos = s->off + s->len;
		sum += s->len;
	}
	return sum == e->data_size ? 0 : -EBADMSG;
}

static int start_data(struct ovl_tar *t);

/* Everything about the entry is known: hand it out. */
static int emit_entry(struct ovl_tar *t)
{
	struct ovl_tar_member *e = &t->e;
	int err;

	if (e->is_sparse) {
		err = check_map(e);
		if (err)
			return err;
	}
	e->raw = t->raw;
	e->rawlen = t->raw_len;
	t->ext_pending = false;
	if (e->type != 'V') {
		t->in_entry = true;
		err = t->ops->entry(t->ctx, e);
		if (err)
			return err;
	}
	t->raw_len = 0;
	return start_data(t);
}

static void after_data(struct ovl_tar *t);
static int end_entry(struct ovl_tar *t);

static int start_data(struct ovl_tar *t)
{
	t->left = t->data_total;
	t->seg = 0;
	t->seg_left = t->e.nsparse ? t->e.sparse[0].len : 0;
	t->off = t->e.nsparse ? t->e.sparse[0].off : 0;
	t->state = t->e.type == 'V' ? ST_SKIP : ST_DATA;
	if (!t->left) {
		/* No data and so no padding: the entry ends here. */
		t->state = ST_HEADER;
		return end_entry(t);
	}
	return 0;
}

static int end_entry(struct ovl_tar *t)
{
	int err = 0;

	if (t->in_entry && t->ops->entry_end)
		err = t->ops->entry_end(t->ctx);
	t->in_entry = false;
	entry_clear(t);
	pending_clear(&t->p);
	return err;
}

/* After the data: padding, then the next header. */
static void after_data(struct ovl_tar *t)
{
	t->left = (BLK - t->data_total % BLK) % BLK;
	t->state = ST_PAD;
}

static int parse_map10(struct ovl_tar *t)
{
	/* "N\n" then N pairs "off\nlen\n" */
	const char *s = t->map, *end = t->map + t->map_len;
	uint64_t n = 0, vals[2] = { 0, 0 };
	int err;

	for (int k = -1; ; k++) {
		const char *nl;

		if (k >= 0 && (uint64_t)k >= n * 2)
			break;
		nl = memchr(s, '\n', (size_t)(end - s));
		if (!nl)
			return 1;	/* need more */
		err = parse_dec(s, (size_t)(nl - s), k < 0 ? &n : &vals[k & 1]);
		if (err)
			return err;
		if (k < 0 && n > SPARSE_MAX)
			return -E2BIG;
		if (k >= 0 && (k & 1)) {
			err = add_seg(&t->p, vals[0], vals[1]);
			if (err)
				return err;
		}
		s = nl + 1;
	}
	return 0;
}

/* A complete header block (not zero, checksum right). */
static int header(struct ovl_tar *t, const uint8_t *b)
{
	struct tar_pending *p = &t->p;
	struct ovl_tar_member *e = &t->e;
	uint8_t type = b[156];
	bool ustar = !memcmp(b + 257, "ustar\0", 6);
	bool gnu = !memcmp(b + 257, "ustar  \0", 8);
	uint64_t size;
	int64_t v;
	int err;

	if (parse_unum(b + 124, 12, &size))
		return -EBADMSG;
	if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
		if (size > EXT_MAX)
			return -E2BIG;
		t->ext_type = type;
		t->ext_want = (size_t)size;
		t->ext_total = (size_t)((size + BLK - 1) / BLK * BLK);
		t->ext_len = 0;
		free(t->ext);
		t->ext = malloc(t->ext_total + 1);
		if (!t->ext)
			return -ENOMEM;
		t->state = ST_EXT;
		return 0;
	}

	entry_clear(t);
	switch (type) {
	case 0: case '7': type = '0'; break;
	case '0': case '1': case '2': case '3': case '4': case '5': case '6':
	case 'S': case 'V': break;
	case 'D': type = '5'; break;	/* GNU dumpdir: a directory */
	default: return -EBADMSG;
	}
	e->type = (char)(type == 'S' ? '0' : type);

	/* Name: PAX path, GNU long name, or ustar prefix/name. */
	if (p->sparse_name) {
		e->name = p->sparse_name;
		e->namelen = p->sparse_namelen;
		p->sparse_name = NULL;
	} else if (p->path) {
		e->name = p->path;
		e->namelen = p->pathlen;
		p->path = NULL;
	} else {
		size_t nl = field_len(b, 100), pl = ustar ? field_len(b + 345, 155) : 0;

		e->name = malloc(nl + pl + 2);
		if (!e->name)
			return -ENOMEM;
		if (pl) {
			memcpy(e->name, b + 345, pl);
			e->name[pl] = '/';
			memcpy(e->name + pl + 1, b, nl);
			e->namelen = pl + 1 + nl;
		} else {
			memcpy(e->name, b, nl);
			e->namelen = nl;
		}
		e->name[e->namelen] = 0;
	}
	if (p->linkpath) {
		e->linkname = p->linkpath;
		e->linklen = p->linklen;
		p->linkpath = NULL;
	} else {
		size_t ll = field_len(b + 157, 100);

		e->linkname = malloc(ll + 1);
		if (!e->linkname)
			return -ENOMEM;
		memcpy(e->linkname, b + 157, ll);
		e->linkname[ll] = 0;
		e->linklen = ll;
	}
	/* v7 archives mark directories with a trailing slash only. */
	if (e->type == '0' && e->namelen && e->name[e->namelen - 1] == '/')
		e->type = '5';

	if (parse_num(b + 100, 8, &v, false))
		return -EBADMSG;
	e->mode = (mode_t)(v & 07777);
	if (parse_unum(b + 108, 8, &e->uid) || parse_unum(b + 116, 8, &e->gid))
		return -EBADMSG;
	if (parse_num(b + 136, 12, &v, true))
		return -EBADMSG;
	e->mtime.tv_sec = (time_t)v;
	e->mtime.tv_nsec = 0;
	if (gnu && b[345] && !parse_num(b + 345, 12, &v, true)) {
		e->atime.tv_sec = (time_t)v;
		e->has_atime = true;
	}
	if (ustar || gnu) {
		uint64_t ma, mi;

		if ((e->type == '3' || e->type == '4') &&
		    (parse_unum(b + 329, 8, &ma) || parse_unum(b + 337, 8, &mi)))
			return -EBADMSG;
		if (e->type == '3' || e->type == '4') {
			e->devmajor = ma;
			e->devminor = mi;
		}
	}
	if (p->has_size)
		size = p->size;
	if (p->has_uid)
		e->uid = p->uid;
	if (p->has_gid)
		e->gid = p->gid;
	if (p->has_mtime)
		e->mtime = p->mtime;
	if (p->has_atime) {
		e->atime = p->atime;
		e->has_atime = true;
	}
	e->xattrs = p->xattrs;
	e->nxattrs = p->nxattrs;

	/* Data: none for header-only types (Go). */
	if (e->type != '0' && e->type != 'V')
		size = 0;
	e->data_size = size;
	e->size = size;
	t->data_total = size;

	if (type == 'S') {
		uint64_t real;

		err = gnu_sparse_array(p, b + 386, 4);
		if (err)
			return err;
		if (parse_unum(b + 483, 12, &real))
			return -EBADMSG;
		e->size = real;
		e->is_sparse = true;
		if (b[482]) {
			t->state = ST_SPARSE_EXT;
			return 0;
		}
		e->sparse = p->segs;
		e->nsparse = p->nsegs;
		return emit_entry(t);
	}
	if (p->sparse_major >= 0 && e->type == '0') {
		e->is_sparse = true;
		if (!p->has_realsize)
			return -EBADMSG;
		e->size = p->realsize;
		if (p->sparse_major == 1) {
			/* The map is at the start of the data area. */
			t->map_len = 0;
			t->left = size;
			t->state = ST_SPARSE_MAP;
			return 0;
		}
		e->sparse = p->segs;
		e->nsparse = p->nsegs;
	}
	return emit_entry(t);
}

/* A complete extension body. */
static int ext_done(struct ovl_tar *t)
{
	struct tar_pending *p = &t->p;
	char *s = (char *)t->ext;
	size_t n = t->ext_want;

	s[n] = 0;
	t->state = ST_HEADER;
	t->ext_pending = true;
	switch (t->ext_type) {
	case 'x':
		return parse_pax(p, s, n, false);
	case 'g':
		return parse_pax(p, s, n, true);
	case 'L':
		return dupmem(&p->path, &p->pathlen, s, strnlen(s, n));
	case 'K':
		return dupmem(&p->linkpath, &p->linklen, s, strnlen(s, n));
	}
	return -EBADMSG;
}

static bool pending_any(const struct ovl_tar *t)
{
	return t->ext_pending;
}

static int block(struct ovl_tar *t, const uint8_t *b)
{
	int err;

	switch (t->state) {
	case ST_HEADER:
		if (is_zero(b, BLK)) {
			t->state = ST_ZERO1;
			return t->ops->raw ? t->ops->raw(t->ctx, OVL_TAR_RAW_TRAILER, b, BLK) : 0;
		}
		err = verify_checksum(b);
		if (err)
			return err;
		err = raw_append(t, b, BLK);
		if (err)
			return err;
		return header(t, b);
	case ST_ZERO1:
		if (!is_zero(b, BLK))
			return -EBADMSG;
		t->state = ST_TRAILER;
		if (pending_any(t))
			return -EBADMSG;
		if (t->ops->raw)
			return t->ops->raw(t->ctx, OVL_TAR_RAW_TRAILER, b, BLK);
		return 0;
	case ST_SPARSE_EXT:
		err = raw_append(t, b, BLK);
		if (!err)
			err = gnu_sparse_array(&t->p, b, 21);
		if (err)
			return err;
		if (!b[504]) {
			t->e.sparse = t->p.segs;
			t->e.nsparse = t->p.nsegs;
			return emit_entry(t);
		}
		return 0;
	case ST_SPARSE_MAP:
		err = raw_append(t, b, BLK);
		if (!err)
			err = grow((void **)&t->map, &t->map_cap, t->map_len + BLK, 1);
		if (err)
			return err;
		if (t->left < BLK)
			return -EBADMSG;
		memcpy(t->map + t->map_len, b, BLK);
		t->map_len += BLK;
		t->left -= BLK;
		if (t->map_len > EXT_MAX + BLK)
			return -E2BIG;
		err = parse_map10(t);
		if (err < 0)
			return err;
		if (err == 0) {
			t->data_total = t->left;
			t->e.data_size = t->left;
			t->e.sparse = t->p.segs;
			t->e.nsparse = t->p.nsegs;
			return emit_entry(t);
		}
		return 0;
	default:
		return -EBADMSG;
	}
}

/* Hand out data bytes, split at sparse segment boundaries. */
static int data(struct ovl_tar *t, const uint8_t *p, size_t n)
{
	int err;

	while (n) {
		size_t k = n;

		if (t->e.nsparse) {
			while (!t->seg_left) {
				if (++t->seg >= t->e.nsparse)
					return -EBADMSG;
				t->seg_left = t->e.sparse[t->seg].len;
				t->off = t->e.sparse[t->seg].off;
			}
			if (k > t->seg_left)
				k = (size_t)t->seg_left;
			t->seg_left -= k;
		}
		err = t->ops->data(t->ctx, p, k, t->off);
		if (err)
			return err;
		t->off += k;
		p += k;
		n -= k;
	}
	return 0;
}

/* Return the number of bytes of buf used (up to n) or -errno. */
static long step(struct ovl_tar *t, const uint8_t *buf, size_t n)
{
	size_t k;
	int err;

	switch (t->state) {
	case ST_HEADER:
	case ST_ZERO1:
	case ST_SPARSE_EXT:
	case ST_SPARSE_MAP:
		if (!t->blen && n >= BLK) {
			err = block(t, buf);
			return err ? err : BLK;
		}
		k = BLK - t->blen < n ? BLK - t->blen : n;
		memcpy(t->blk + t->blen, buf, k);
		t->blen += k;
		if (t->blen == BLK) {
			t->blen = 0;
			err = block(t, t->blk);
			if (err)
				return err;
		}
		return (long)k;
	case ST_EXT:
		k = t->ext_total - t->ext_len < n ? t->ext_total - t->ext_len : n;
		memcpy(t->ext + t->ext_len, buf, k);
		err = raw_append(t, buf, k);
		if (err)
			return err;
		t->ext_len += k;
		if (t->ext_len == t->ext_total) {
			err = ext_done(t);
			if (err)
				return err;
		}
		return (long)k;
	case ST_DATA:
	case ST_SKIP:
		k = t->left < n ? (size_t)t->left : n;
		if (k && t->state == ST_DATA) {
			err = data(t, buf, k);
			if (err)
				return err;
		}
		t->left -= k;
		if (!t->left)
			after_data(t);
		return (long)k;
	case ST_PAD:
		k = t->left < n ? (size_t)t->left : n;
		if (k && t->ops->raw) {
			err = t->ops->raw(t->ctx, OVL_TAR_RAW_PAD, buf, k);
			if (err)
				return err;
		}
		t->left -= k;
		if (!t->left) {
			err = end_entry(t);
			if (err)
				return err;
			t->state = ST_HEADER;
		}
		return (long)k;
	case ST_TRAILER:
		if (!is_zero(buf, n))
			return -EBADMSG;
		if (t->ops->raw) {
			err = t->ops->raw(t->ctx, OVL_TAR_RAW_TRAILER, buf, n);
			if (err)
				return err;
		}
		return (long)n;
	case ST_FAILED:
		return t->err;
	}
	return -EINVAL;
}

int ovl_tar_new(const struct ovl_tar_ops *ops, void *ctx, bool record,
		struct ovl_tar **out)
{
	struct ovl_tar *t = calloc(1, sizeof(*t));

	if (!t)
		return -ENOMEM;
	t->ops = ops;
	t->ctx = ctx;
	t->record = record;
	t->p.sparse_major = t->p.sparse_minor = -1;
	*out = t;
	return 0;
}

/* Feed n bytes (any split).  Return 0 or -errno: -EBADMSG corruption,
 * -E2BIG an extension over its limit, or what a callback returned; after
 * an error every call returns it again. */
int ovl_tar_feed(struct ovl_tar *t, const void *buf, size_t n)
{
	const uint8_t *p = buf;

	if (t->state == ST_FAILED)
		return t->err;
	while (n) {
		long r = step(t, p, n);

		if (r < 0)
			return fail(t, (int)r);
		p += r;
		n -= (size_t)r;
		if (t->state == ST_PAD && !t->left) {
			int err = end_entry(t);

			if (err)
				return fail(t, err);
			t->state = ST_HEADER;
		}
	}
	/* Data that ends on a block boundary has no padding: the entry ends. */
	if (t->state == ST_PAD && !t->left) {
		int err = end_entry(t);

		if (err)
			return fail(t, err);
		t->state = ST_HEADER;
	}
	return 0;
}

/* The input ended.  Return 0 if at a clean end (after the end blocks, or
 * at a header boundary with nothing pending), -ENODATA if truncated. */
int ovl_tar_finish(struct ovl_tar *t)
{
	if (t->state == ST_FAILED)
		return t->err;
	if (t->state == ST_TRAILER)
		return 0;
	if ((t->state == ST_HEADER || t->state == ST_ZERO1) && !t->blen &&
	    !pending_any(t))
		return 0;
	return fail(t, -ENODATA);
}

/* Bytes of the stream read past the header of the current entry?  (For
 * the caller's error messages: the entry being read, or NULL.) */
const struct ovl_tar_member *ovl_tar_current(const struct ovl_tar *t)
{
	return t->e.name ? &t->e : NULL;
}

void ovl_tar_free(struct ovl_tar *t)
{
	if (!t)
		return;
	entry_clear(t);
	pending_clear(&t->p);
	free(t->ext);
	free(t->map);
	free(t->raw);
	free(t);
}
