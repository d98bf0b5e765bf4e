/* test_tar_write.c - tar header encoding at the ustar/PAX boundaries, and
 * a small layer exported end to end. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "testutil.h"

static unsigned char buf[1 << 16];

static struct ovl_tar_entry reg(const char *name)
{
	struct ovl_tar_entry e = { .name = name, .namelen = strlen(name), .type = OVL_TAR_REG,
				   .mode = 0644, .mtime = 1700000000 };
	return e;
}

static long octal(const unsigned char *p, int width)
{
	char tmp[16] = { 0 };

	memcpy(tmp, p, (size_t)width);
	return strtol(tmp, NULL, 8);
}

static int valid_checksum(const unsigned char *blk)
{
	unsigned sum = 0;

	for (int i = 0; i < 512; i++)
		sum += (i >= 148 && i < 156) ? ' ' : blk[i];
	return (long)sum == octal(blk + 148, 7);
}

/* The PAX record value of key in the 'x' header at buf, or NULL. */
static const char *pax_value(const char *key, size_t *vlen)
{
	long size = octal(buf + 124, 11);
	const char *p = (const char *)buf + 512, *end = p + size;

	while (p < end) {
		char *sp;
		long len = strtol(p, &sp, 10);
		const char *k = sp + 1, *eq = memchr(k, '=', (size_t)(p + len - k));

		if ((size_t)(eq - k) == strlen(key) && !memcmp(k, key, strlen(key))) {
			*vlen = (size_t)(p + len - 1 - (eq + 1));
			return eq + 1;
		}
		p += len;
	}
	return NULL;
}

static char name100[101], name101[102], split[300], nosplit[300], longname[400];

int main(void)
{
	struct ovl_tar_entry e;
	size_t vlen;
	long n;

	/* A plain ustar header. */
	e = reg("etc/passwd");
	n = ovl_tar_header(&e, buf, sizeof(buf));
	CHECK_EQ(n, 512);
	CHECK(!memcmp(buf, "etc/passwd", 11));
	CHECK(!memcmp(buf + 257, "ustar\0" "00", 8));
	CHECK_EQ(octal(buf + 100, 7), 0644);
	CHECK_EQ(octal(buf + 136, 11), 1700000000);
	CHECK_EQ(buf[156], '0');
	CHECK(valid_checksum(buf));
	CHECK_EQ(buf[265], 0);	/* uname empty */
	/* Too little room: the length, nothing written. */
	memset(buf, 0x55, 512);
	CHECK_EQ(ovl_tar_header(&e, buf, 100), 512);
	CHECK_EQ(buf[0], 0x55);

	/* 100-byte names fit; 101 split at a '/'; no '/' to split: PAX. */
	memset(name100, 'a', 100);
	e = reg(name100);
	CHECK_EQ(ovl_tar_header(&e, buf, sizeof(buf)), 512);
	CHECK(!memcmp(buf, name100, 100));
	memset(name101, 'b', 101);
	name101[50] = '/';
	e = reg(name101);
	CHECK_EQ(ovl_tar_header(&e, buf, sizeof(buf)), 512);
	CHECK(!memcmp(buf + 345, name101, 50) && buf[345 + 50] == 0);
	CHECK(!memcmp(buf, name101 + 51, 50));
	/* 155-byte prefix + '/' + 100-byte name: the longest ustar path. */
	memset(split, 'c', 256);
	split[155] = '/';
	e = reg(split);
	CHECK_EQ(ovl_tar_header(&e, buf, sizeof(buf)), 512);
	CHECK_EQ(buf[345 + 154], 'c');
	/* The '/' one byte too far: the prefix would be 156 bytes. */
	memset(nosplit, 'd', 257);
	nosplit[156] = '/';
	e = reg(nosplit);
	n = ovl_tar_header(&e, buf, sizeof(buf));
	CHECK_EQ(n, 3 * 512);
	CHECK_EQ(buf[156], 'x');
	CHECK(valid_checksum(buf));
	CHECK(pax_value("path", &vlen) && vlen == 257);
	CHECK(valid_checksum(buf + 1024));
	CHECK_EQ(buf[1024 + 156], '0');
	/* > 255 bytes in one component chain. */
	memset(longname, 'e', 399);
	e = reg(longname);
	n = ovl_tar_header(&e, buf, sizeof(buf));
	CHECK(pax_value("path", &vlen) && vlen == 399);

	/* 8 GiB - 1 is ustar, 8 GiB is PAX size. */
	e = reg("big");
	e.size = 077777777777LL;
	CHECK_EQ(ovl_tar_header(&e, buf, sizeof(buf)), 512);
	CHECK_EQ(octal(buf + 124, 11), 077777777777LL);
	e.size = 8LL << 30;
	n = ovl_tar_header(&e, buf, sizeof(buf));
	CHECK_EQ(n, 3 * 512);
	CHECK(pax_value("size", &vlen) && !memcmp(pax_value("size", &vlen), "8589934592", 10));
	CHECK_EQ(octal(buf + 512 * 2 + 124, 11), 0);

	/* uid 2097151 is ustar, 2097152 is PAX; negative mtime is PAX. */
	e = reg("owner");
	e.uid = 2097151;
	CHECK_EQ(ovl_tar_header(&e, buf, sizeof(buf)), 512);
	e.uid = 2097152;
	e.gid = 4000000000LL;
	e.mtime = -5;
	n = ovl_tar_header(&e, buf, sizeof(buf));
	CHECK_EQ(n, 3 * 512);
	CHECK(pax_value("uid", &vlen) && vlen == 7 && !memcmp(pax_value("uid", &vlen), "2097152", 7));
	CHECK(pax_value("gid", &vlen) && vlen == 10);
	CHECK(pax_value("mtime", &vlen) && vlen == 2 && !memcmp(pax_value("mtime", &vlen), "-5", 2));
	CHECK_EQ(octal(buf + 1024 + 108, 7), 0);

	/* A binary xattr, a non-ASCII name, a long link target. */
	static const unsigned char cap[20] = { 1, 0, 0, 2, 0, 0, 0x0a, 0 };
	struct ovl_tar_xattr x = { "security.capability", cap, sizeof(cap) };
	char target[200];

	memset(target, 't', sizeof(target) - 1);
	target[sizeof(target) - 1] = 0;
	e = reg("caf\xc3\xa9");
	e.type = OVL_TAR_SYMLINK;
	e.linkname = target;
	e.linklen = strlen(target);
	e.xattrs = &x;
	e.nxattrs = 1;
	n = ovl_tar_header(&e, buf, sizeof(buf));
	CHECK(n >= 3 * 512);
	CHECK(pax_value("SCHILY.xattr.security.capability", &vlen) && vlen == 20 &&
	      !memcmp(pax_value("SCHILY.xattr.security.capability", &vlen), cap, 20));
	CHECK(pax_value("linkpath", &vlen) && vlen == 199);
	CHECK(pax_value("path", &vlen) && vlen == 5);

	/* Devices keep their numbers; bad input is refused. */
	e = reg("dev/null");
	e.type = OVL_TAR_CHR;
	e.devmajor = 1;
	e.devminor = 3;
	CHECK_EQ(ovl_tar_header(&e, buf, sizeof(buf)), 512);
	CHECK_EQ(octal(buf + 329, 7), 1);
	CHECK_EQ(octal(buf + 337, 7), 3);
	e.devmajor = 1u << 22;
	CHECK_EQ(ovl_tar_header(&e, buf, sizeof(buf)), -EINVAL);
	e = reg("x");
	e.size = -1;
	CHECK_EQ(ovl_tar_header(&e, buf, sizeof(buf)), -EINVAL);

	/* A layer exported: dir before children, whiteout as .wh.NAME. */
	t_setup("tarw");
	t_mkdir("l/a");
	t_file("l/a/f", "hello");
	t_whiteout("l/gone");
	{
		struct ovl_export_opts o = { .layer = t_path("l") };
		struct ovl_export *ex;
		static char tar[1 << 16];
		long total = 0, r;

		CHECK_EQ(ovl_export_open(&o, &ex), 0);
		while ((r = ovl_export_read(ex, tar + total, 700)) > 0)
			total += r;
		CHECK_EQ(r, 0);
		/* a/, a/f + 1 data block, .wh.gone, end */
		CHECK_EQ(total, 512 * 4 + 1024);
		CHECK(!strcmp(tar, "a/"));
		CHECK(!strcmp(tar + 512, "a/f"));
		CHECK(!memcmp(tar + 1024, "hello", 5));
		CHECK(!strcmp(tar + 1536, ".wh.gone"));
		ovl_export_close(ex);
	}
	return t_teardown();
}
