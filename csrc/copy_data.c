/* copy_data.c - moving a file's data to its copy without user-space
 * buffers where the filesystems allow it (copy_up.c:ovl_copy_up_file).
 *
 * In order: a whole-file clone (FICLONE: shared extents, constant time);
 * copy_file_range in large chunks over the data extents only (SEEK_DATA /
 * SEEK_HOLE, so sparse files stay sparse); sendfile; read/write.  Each
 * falls through to the next on EXDEV, ENOSYS, EOPNOTSUPP, EINVAL, and
 * copy_file_range also on a 0-byte copy of a non-empty range (some
 * filesystems answer that instead of an error).  The final size is set with
 * ftruncate, so a trailing hole stays a hole.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ovl_internal.h"

#ifndef __NR_copy_file_range
#define __NR_copy_file_range 326	/* x86_64; aarch64 defines it (285) */
#endif

#define OVL_COPY_CHUNK ((size_t)64 << 20)

static bool fall_through(int err)
{
	return err == -EXDEV || err == -ENOSYS || err == -EOPNOTSUPP ||
	       err == -ENOTTY || err == -EINVAL || err == -EBADF || err == -ETXTBSY;
}

static ssize_t sys_copy_file_range(int in, off_t *inoff, int out, off_t *outoff,
				   size_t len)
{
	long r = syscall(__NR_copy_file_range, in, inoff, out, outoff, len, 0);

	return r < 0 ? -errno : r;
}

/* Copy [off, off + len) with copy_file_range.  Return 0, 1 if the
 * filesystem cannot (fall through), or -errno. */
static int cfr_range(int in, int out, off_t off, off_t len)
{
	while (len > 0) {
		off_t inoff = off, outoff = off;
		size_t chunk = len > (off_t)OVL_COPY_CHUNK ? OVL_COPY_CHUNK : (size_t)len;
		ssize_t n = sys_copy_file_range(in, &inoff, out, &outoff, chunk);

		if (n == -EINTR)
			continue;
		if (n < 0)
			return fall_through((int)n) ? 1 : (int)n;
		if (n == 0)
			return 1;	/* nothing copied from a non-empty range */
		off += n;
		len -= n;
	}
	return 0;
}

static int sendfile_range(int in, int out, off_t off, off_t len)
{
	if (lseek(out, off, SEEK_SET) < 0)
		return -errno;
	while (len > 0) {
		off_t inoff = off;
		size_t chunk = len > (off_t)OVL_COPY_CHUNK ? OVL_COPY_CHUNK : (size_t)len;
		ssize_t n = sendfile(out, in, &inoff, chunk);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return fall_through(-errno) ? 1 : -errno;
		if (n == 0)
			return -EIO;	/* the source shrank under us */
		off += n;
		len -= n;
	}
	return 0;
}

static int rw_range(int in, int out, off_t off, off_t len)
{
	size_t bufsize = 1 << 20;
	char *buf = malloc(bufsize);
	int err = 0;

	if (!buf)
		return -ENOMEM;
	while (len > 0) {
		size_t want = len > (off_t)bufsize ? bufsize : (size_t)len;
		ssize_t n = pread(in, buf, want, off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err = n < 0 ? -errno : -EIO;
			break;
		}
		for (ssize_t done = 0; done < n;) {
			ssize_t w = pwrite(out, buf + done, (size_t)(n - done), off + done);

			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				err = -errno;
				goto out;
			}
			done += w;
		}
		off += n;
		len -= n;
	}
out:
	free(buf);
	return err;
}

/* The next data extent at or after off, in *start and *end; 1 at the end. */
static int next_extent(int in, off_t off, off_t size, off_t *start, off_t *end)
{
	off_t d = lseek(in, off, SEEK_DATA);

	if (d < 0)
		return errno == ENXIO ? 1 : -errno;
	if (d >= size)
		return 1;
	off_t h = lseek(in, d, SEEK_HOLE);

	if (h < 0)
		return -errno;
	*start = d;
	*end = h < size ? h : size;
	return 0;
}

/* Copy the data of in (size bytes) to out, an empty regular file; holes
 * are looked for only with OVL_COPY_SPARSE (OVL_COPY_SET_SIZE: then give
 * out the size; without it out keeps its own, and a hole of in leaves
 * out's range as it was).  Return the method used (enum ovl_copy_method)
 * or -errno. */
int ovl_copy_data(int in, int out, off_t size, unsigned flags)
{
	int method = OVL_COPY_CLONE, err;
	bool sparse = flags & OVL_COPY_SPARSE;
	off_t off = 0;

	if (size == 0)
		return OVL_COPY_NONE;
	if (ioctl(out, FICLONE, in) == 0)
		return OVL_COPY_CLONE;
	method = OVL_COPY_CFR;
	for (;;) {
		off_t start = off, end = size;
		int r = sparse ? next_extent(in, off, size, &start, &end) : 0;

		if (r < 0 && fall_through(r)) {
			/* No SEEK_DATA here: copy everything as data. */
			sparse = false;
			r = 0;
		}
		if (r < 0)
			return r;
		if (r == 1)
			break;
		if (!sparse) {
			start = off;
			end = size;
		}
		for (;;) {
			if (method == OVL_COPY_CFR)
				err = cfr_range(in, out, start, end - start);
			else if (method == OVL_COPY_SENDFILE)
				err = sendfile_range(in, out, start, end - start);
			else
				err = rw_range(in, out, start, end - start);
			if (err != 1)
				break;
			/* This method cannot do it: the range starts over
			 * with the next one. */
			method = method == OVL_COPY_CFR ? OVL_COPY_SENDFILE : OVL_COPY_RW;
		}
		if (err)
			return err;
		off = end;
		if (!sparse || off >= size)
			break;
	}
	/* A hole at the end is the size alone. */
	if ((flags & OVL_COPY_SET_SIZE) && off < size && ftruncate(out, size) < 0)
		return -errno;
	return method;
}
