/* tar_write.c - the headers of an OCI layer tar, as moby's archive writes
 * them (Go archive/tar with FormatPAX, go-archive FileInfoHeader).
 *
 * One entry is a ustar header block, preceded by a PAX extended header
 * ('x') when a field does not fit ustar: a name or link target longer than
 * ustar can hold (name 100 bytes, or a 155-byte prefix split at a '/') or
 * not ASCII (Go's rule: ustar fields are ASCII), a uid/gid past 07777777,
 * a size past 077777777777 (8 GiB), an mtime before the epoch or past 2^33,
 * and every xattr (SCHILY.xattr.NAME=VALUE, the value binary-safe: a PAX
 * record is length-prefixed).  The ustar field of a value moved to PAX is
 * 0.  uname/gname stay empty, mtime is whole seconds, atime and ctime are
 * never written: the same metadata always gives the same bytes.  The mode
 * field is written as given: moby's headers carry the file type bits too
 * (go-archive fillGo18FileTypeBits: 0100644 for a regular file), readers
 * take the permission bits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ovl_internal.h"

#define NAME_LEN 100
#define PREFIX_LEN 155
#define MAX_OCT7 07777777LL
#define MAX_OCT11 077777777777LL

/* The ustar field offsets (POSIX.1-2001 pax: ustar Interchange Format). */
enum { F_NAME = 0, F_MODE = 100, F_UID = 108, F_GID = 116, F_SIZE = 124,
       F_MTIME = 136, F_CHKSUM = 148, F_TYPE = 156, F_LINK = 157,
       F_MAGIC = 257, F_VERSION = 263, F_UNAME = 265, F_GNAME = 297,
       F_DEVMAJOR = 329, F_DEVMINOR = 337, F_PREFIX = 345 };

static bool is_ascii(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] >= 0x80 || !s[i])
			return false;
	return true;
}

/* Zero-padded octal in width-1 digits and a NUL, as Go's formatOctal. */
static void put_octal(unsigned char *blk, int off, int width, unsigned long long v)
{
	for (int i = width - 2; i >= 0; i--, v >>= 3)
		blk[off + i] = (unsigned char)('0' + (v & 7));
	blk[off + width - 1] = '\0';
}

/* Where name (len bytes) splits into a ustar prefix and name: the index of
 * the '/' between them, or -1 when it cannot (Go's splitUSTARPath). */
static long ustar_split(const char *name, size_t len)
{
	if (len <= NAME_LEN || len > PREFIX_LEN + 1 + NAME_LEN)
		return -1;
	/* The last '/' that leaves a prefix of at most 155 bytes; the rest
	 * after it must be 1..100 bytes. */
	for (size_t i = len - 1 < PREFIX_LEN ? len - 1 : PREFIX_LEN; i > 0; i--) {
		if (len - i - 1 > NAME_LEN)
			return -1;
		if (name[i] == '/')
			return len - i - 1 > 0 ? (long)i : -1;
	}
	return -1;
}

/* One PAX record "LEN key=value\n" appended at *pos of buf (size bytes,
 * nothing written past it); *pos always advances by the record's length. */
static void pax_record(char *buf, size_t size, size_t *pos, const char *key,
		       size_t klen, const char *val, size_t vlen)
{
	size_t body = 1 + klen + 1 + vlen + 1, len = body, digits = 1;

	for (;;) {
		size_t d = 1;

		for (size_t x = len; x >= 10; x /= 10)
			d++;
		if (d == digits)
			break;
		digits = d;
		len = body + digits;
	}
	len = body + digits;
	if (*pos + len <= size) {
		char *p = buf + *pos;

		p += sprintf(p, "%zu ", len);
		memcpy(p, key, klen);
		p += klen;
		*p++ = '=';
		memcpy(p, val, vlen);
		p += vlen;
		*p = '\n';
	}
	*pos += len;
}

static void pax_number(char *buf, size_t size, size_t *pos, const char *key, long long v)
{
	char num[24];
	int n = snprintf(num, sizeof(num), "%lld", v);

	pax_record(buf, size, pos, key, strlen(key), num, (size_t)n);
}

static void checksum(unsigned char *blk)
{
	unsigned sum = 0;

	memset(blk + F_CHKSUM, ' ', 8);
	for (int i = 0; i < OVL_TAR_BLOCK; i++)
		sum += blk[i];
	snprintf((char *)blk + F_CHKSUM, 8, "%06o", sum);
	blk[F_CHKSUM + 7] = ' ';
}

/* A ustar header block with the common fields: ustar magic, version "00". */
static void ustar_block(unsigned char *blk, char type, uint32_t mode, long long uid,
			long long gid, long long size, long long mtime)
{
	memset(blk, 0, OVL_TAR_BLOCK);
	put_octal(blk, F_MODE, 8, mode);
	put_octal(blk, F_UID, 8, (unsigned long long)uid);
	put_octal(blk, F_GID, 8, (unsigned long long)gid);
	put_octal(blk, F_SIZE, 12, (unsigned long long)size);
	put_octal(blk, F_MTIME, 12, (unsigned long long)mtime);
	blk[F_TYPE] = (unsigned char)type;
	memcpy(blk + F_MAGIC, "ustar", 6);
	memcpy(blk + F_VERSION, "00", 2);
	put_octal(blk, F_DEVMAJOR, 8, 0);
	put_octal(blk, F_DEVMINOR, 8, 0);
}

/* The PaxHeaders name Go gives an entry's extended header:
 * dir(name)/PaxHeaders.0/base(name), cut to 100 bytes. */
static void pax_name(unsigned char *blk, const char *name, size_t len)
{
	char tmp[NAME_LEN + 1];
	size_t end = len, b;

	while (end > 1 && name[end - 1] == '/')
		end--;
	for (b = end; b > 0 && name[b - 1] != '/'; b--)
		;
	snprintf(tmp, sizeof(tmp), "%.*sPaxHeaders.0/%.*s", (int)b, name, (int)(end - b), name + b);
	memcpy(blk + F_NAME, tmp, strlen(tmp));
}

long ovl_tar_header(const struct ovl_tar_entry *e, void *out, size_t size)
{
	unsigned char blk[OVL_TAR_BLOCK];
	char *buf = out;
	size_t pos = 0, paxlen = 0, hdr;
	long split = -1;
	bool pax_path, pax_link = false;
	bool big_uid = e->uid < 0 || e->uid > MAX_OCT7, big_gid = e->gid < 0 || e->gid > MAX_OCT7;
	bool big_size = e->size > MAX_OCT11, big_mtime = e->mtime < 0 || e->mtime > MAX_OCT11;

	if (e->size < 0 || !e->namelen || e->devmajor > MAX_OCT7 || e->devminor > MAX_OCT7)
		return -EINVAL;
	if (memchr(e->name, '\0', e->namelen) || (e->linklen && memchr(e->linkname, '\0', e->linklen)))
		return -EINVAL;
	pax_path = !is_ascii(e->name, e->namelen);
	if (!pax_path && e->namelen > NAME_LEN) {
		split = ustar_split(e->name, e->namelen);
		pax_path = split < 0;
	}
	if (e->linklen)
		pax_link = e->linklen > NAME_LEN || !is_ascii(e->linkname, e->linklen);

	/* The PAX records, keys in byte order as Go sorts them; measured
	 * first (buf NULL-sized), then written after the 'x' header block. */
	for (int pass = 0; pass < 2; pass++) {
		char *rec = pass ? buf + OVL_TAR_BLOCK : NULL;
		size_t room = pass ? size - OVL_TAR_BLOCK : 0;

		pos = 0;
		for (size_t i = 0; i < e->nxattrs; i++) {
			char key[16 + 256];
			int k = snprintf(key, sizeof(key), "SCHILY.xattr.%s", e->xattrs[i].name);

			if (k < 0 || (size_t)k >= sizeof(key))
				return -EINVAL;
			pax_record(rec, room, &pos, key, (size_t)k, e->xattrs[i].value,
				   e->xattrs[i].size);
		}
		if (big_gid)
			pax_number(rec, room, &pos, "gid", e->gid);
		if (pax_link)
			pax_record(rec, room, &pos, "linkpath", 8, e->linkname, e->linklen);
		if (big_mtime)
			pax_number(rec, room, &pos, "mtime", e->mtime);
		if (pax_path)
			pax_record(rec, room, &pos, "path", 4, e->name, e->namelen);
		if (big_size)
			pax_number(rec, room, &pos, "size", e->size);
		if (big_uid)
			pax_number(rec, room, &pos, "uid", e->uid);
		paxlen = pos;
		if (!paxlen)
			break;
		if (!pass && size < OVL_TAR_BLOCK + ((paxlen + OVL_TAR_BLOCK - 1) & ~(size_t)(OVL_TAR_BLOCK - 1)) + OVL_TAR_BLOCK)
			return (long)(2 * OVL_TAR_BLOCK + ((paxlen + OVL_TAR_BLOCK - 1) & ~(size_t)(OVL_TAR_BLOCK - 1)));
	}
	hdr = 0;
	if (paxlen) {
		size_t padded = (paxlen + OVL_TAR_BLOCK - 1) & ~(size_t)(OVL_TAR_BLOCK - 1);

		ustar_block(blk, 'x', 0, 0, 0, (long long)paxlen, 0);
		pax_name(blk, e->name, e->namelen);
		checksum(blk);
		memcpy(buf, blk, OVL_TAR_BLOCK);
		memset(buf + OVL_TAR_BLOCK + paxlen, 0, padded - paxlen);
		hdr = OVL_TAR_BLOCK + padded;
	} else if (size < OVL_TAR_BLOCK) {
		return OVL_TAR_BLOCK;
	}

	ustar_block(blk, e->type, e->mode & 07777777, big_uid ? 0 : e->uid, big_gid ? 0 : e->gid,
		    big_size ? 0 : e->size, big_mtime ? 0 : e->mtime);
	if (pax_path) {
		/* What fits, for readers without PAX (as Go leaves it). */
		memcpy(blk + F_NAME, e->name, e->namelen < NAME_LEN ? e->namelen : NAME_LEN);
	} else if (split >= 0) {
		memcpy(blk + F_PREFIX, e->name, (size_t)split);
		memcpy(blk + F_NAME, e->name + split + 1, e->namelen - (size_t)split - 1);
	} else {
		memcpy(blk + F_NAME, e->name, e->namelen);
	}
	if (e->linklen)
		memcpy(blk + F_LINK, e->linkname, e->linklen < NAME_LEN ? e->linklen : NAME_LEN);
	if (e->type == OVL_TAR_CHR || e->type == OVL_TAR_BLK) {
		put_octal(blk, F_DEVMAJOR, 8, e->devmajor);
		put_octal(blk, F_DEVMINOR, 8, e->devminor);
	}
	checksum(blk);
	memcpy(buf + hdr, blk, OVL_TAR_BLOCK);
	return (long)(hdr + OVL_TAR_BLOCK);
}
