/* readdir.c - building a directory's merged index (the listings that
 * ovl_listdir hands out, inode.c, are read from it).
 *
 * Each layer of a directory's merge stack is read once with getdents64.
 * Names are deduplicated top-most first: the first occurrence supplies the
 * type and inode, a whiteout there hides the name, and a directory keeps
 * collecting the layers below where the name is again a directory, up to
 * the first non-directory or whiteout (namei.c turns those into the child's
 * merge stack).  The listing order is the kernel's (readdir.c:
 * ovl_dir_read_merged): the bottom layer's names in its getdents order,
 * then the other names by first appearance from the top down.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ovl_internal.h"

/* Per-build scratch: where each name was seen last and its position there
 * (for the order), and the occurrences below the top in the order they
 * were read (laid out per entry when the build finishes). */
struct ovl_build {
	uint16_t *last;
	uint32_t *pos;
	uint32_t *lastocc;	/* index in occs of the name's latest occurrence */
	uint32_t cap;
	struct { uint32_t seq, occ; } *occs;
	uint32_t nocc, occcap;
};

#define NO_OCC UINT32_MAX

/* While a directory is built, an entry's ext holds its first-appearance
 * number. */
static inline uint32_t ovl_ent_seq(const struct ovl_ent *e)
{
	return (uint32_t)(uintptr_t)e->ext;
}

static int build_reserve(struct ovl_dir *d, uint32_t n)
{
	struct ovl_build *b = d->build;

	if (n <= b->cap)
		return 0;
	uint32_t cap = b->cap ? b->cap * 2 : 256;

	while (cap < n)
		cap *= 2;
	uint16_t *last = realloc(b->last, cap * sizeof(*last));

	if (!last)
		return -ENOMEM;
	b->last = last;
	uint32_t *pos = realloc(b->pos, cap * sizeof(*pos));

	if (!pos)
		return -ENOMEM;
	b->pos = pos;
	uint32_t *lastocc = realloc(b->lastocc, cap * sizeof(*lastocc));

	if (!lastocc)
		return -ENOMEM;
	b->lastocc = lastocc;
	b->cap = cap;
	return 0;
}

/* Note one more occurrence of e (below its top). */
static int build_add_occ(struct ovl_dir *d, struct ovl_ent *e, uint32_t occ)
{
	struct ovl_build *b = d->build;

	if (b->nocc == b->occcap) {
		uint32_t cap = b->occcap ? b->occcap * 2 : 64;
		void *n = realloc(b->occs, cap * sizeof(*b->occs));

		if (!n)
			return -ENOMEM;
		b->occs = n;
		b->occcap = cap;
	}
	b->occs[b->nocc].seq = ovl_ent_seq(e);
	b->occs[b->nocc].occ = occ;
	b->lastocc[ovl_ent_seq(e)] = b->nocc++;
	e->nocc++;
	return 0;
}

int ovl_build_begin(struct ovl_dir *d)
{
	d->build = calloc(1, sizeof(*d->build));
	return d->build ? 0 : -ENOMEM;
}

void ovl_build_end(struct ovl_dir *d)
{
	if (!d->build)
		return;
	free(d->build->last);
	free(d->build->pos);
	free(d->build->lastocc);
	free(d->build->occs);
	free(d->build);
	d->build = NULL;
}

/* Record that stack layer si holds name as kind (enum ovl_occ_kind; OK_NONE
 * with OK_OCI for a ".wh.NAME").  The first layer to hold the name is its
 * top-most occurrence; the others are kept for lookups (namei.c). */
static int merge_name(struct ovl_dir *d, uint16_t si, const char *name, size_t len,
		      unsigned char dtype, uint64_t ino, int bits)
{
	uint32_t h = ovl_name_hash(name, len);
	struct ovl_ent *e = ovl_dir_find(d, name, len, h);
	int kind = bits & OK_KIND;

	if (!e) {
		e = ovl_dir_insert(d, name, len, h);
		if (!e || build_reserve(d, d->nents))
			return -ENOMEM;
		d->build->lastocc[ovl_ent_seq(e)] = NO_OCC;
		e->top = si;
		e->dtype = kind == OK_NONE ? DT_UNKNOWN : dtype;
		e->ino = ino;
		e->flags = (kind == OK_NONE || kind == OK_WH ? OVL_E_WHITEOUT : 0) |
			   (bits & OK_OCI ? OVL_E_TOPOCI : 0);
	} else if (e->top == si) {
		/* NAME and ".wh.NAME" in one layer: the layer's NAME is seen,
		 * the layers below are not. */
		if (bits & OK_OCI) {
			e->flags |= OVL_E_TOPOCI;
		} else {
			e->dtype = dtype;
			e->ino = ino;
			e->flags = (e->flags & ~OVL_E_WHITEOUT) |
				   (kind == OK_WH ? OVL_E_WHITEOUT : 0);
		}
	} else {
		struct ovl_build *b = d->build;
		uint32_t i = b->lastocc[ovl_ent_seq(e)];

		if (i != NO_OCC && OVL_OCC_SI(b->occs[i].occ) == si)
			b->occs[i].occ |= (uint32_t)bits;	/* the other of NAME / .wh.NAME */
		else if (build_add_occ(d, e, OVL_OCC(si, bits)))
			return -ENOMEM;
	}
	return 0;
}

/* Remember where a listed name stands in this layer (for the order). */
static void note_position(struct ovl_dir *d, const char *name, size_t len,
			  uint16_t si, uint32_t pos)
{
	struct ovl_ent *e = ovl_dir_find(d, name, len, ovl_name_hash(name, len));

	d->build->last[ovl_ent_seq(e)] = si;
	d->build->pos[ovl_ent_seq(e)] = pos;
}

static int classify(struct ovl_stack *s, struct ovl_dir *d, uint16_t si, int fd,
		    const char *name, unsigned char *dtype, int *kind)
{
	int r;

	if (*dtype == DT_UNKNOWN) {
		struct stat st;

		if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
		*dtype = (unsigned char)IFTODT(st.st_mode);
	}
	*kind = *dtype == DT_DIR ? OK_DIR : *dtype == DT_REG ? OK_REG : OK_OTHER;
	if (!ovl_kernel_wh(s))
		return 0;
	if (*dtype == DT_CHR) {
		r = ovl_classify_chr(s, fd, name);
		if (r < 0)
			return r;
		if (r)
			*kind = OK_WH;
	} else if (*dtype == DT_REG && d->stack[si].xmarker) {
		/* Only directories marked opaque=x are searched for xattr
		 * whiteouts while listing, as the kernel's readdir does. */
		r = ovl_is_xwhiteout_at(s, fd, name);
		if (r < 0)
			return r;
		if (r)
			*kind = OK_WH;
	}
	return 0;
}

/* Read stack layer si of d from fd (a directory opened for reading) into
 * d's index.  *oci_opaque is set when the layer holds ".wh..wh..opq".
 * Return 0 or -errno. */
int ovl_index_layer(struct ovl_stack *s, struct ovl_dir *d, uint32_t si,
		    int fd, bool *oci_opaque)
{
	char buf[32768];
	uint32_t pos = 0;
	bool oci = ovl_oci_wh(s), done = false;
	bool greedy = s->layers[d->stack[si].layer].greedy_getdents;
	int err = 0;

	*oci_opaque = false;
	while (!done) {
		ssize_t n = getdents64(fd, buf, sizeof(buf));

		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		/* Room left for the longest entry: nothing more to read. */
		done = greedy && sizeof(buf) - (size_t)n >= 24 + OVL_NAME_MAX + 1 + 8;
		/* One chunk for this batch's new names: no slack for the
		 * common one-batch directory. */
		size_t need = 0;

		for (ssize_t off = 0; off < n;) {
			struct dirent64 *de = (struct dirent64 *)(buf + off);

			need += (sizeof(struct ovl_ent) + strlen(de->d_name) + 1 + 7) & ~(size_t)7;
			off += de->d_reclen;
		}
		if (si == 0 && ovl_arena_reserve(&d->arena, need))
			return -ENOMEM;
		for (ssize_t off = 0; off < n;) {
			struct dirent64 *de = (struct dirent64 *)(buf + off);
			const char *name = de->d_name;
			size_t len = strlen(name);
			unsigned char dtype = de->d_type;
			int kind = OK_OTHER;

			off += de->d_reclen;
			if (name[0] == '.' && (len == 1 || (len == 2 && name[1] == '.')))
				continue;
			if (oci && ovl_oci_is_marker(name, len)) {
				const char *hidden;
				size_t hlen = ovl_oci_hidden_name(name, len, &hidden);

				if (ovl_oci_is_opaque_marker(name))
					*oci_opaque = true;
				else if (hlen)
					err = merge_name(d, (uint16_t)si, hidden, hlen,
							 DT_UNKNOWN, 0, OK_NONE | OK_OCI);
				if (err)
					return err;
				continue;
			}
			err = classify(s, d, (uint16_t)si, fd, name, &dtype, &kind);
			if (err == -ENOENT)
				continue;	/* removed while we read */
			if (!err)
				err = merge_name(d, (uint16_t)si, name, len, dtype,
						 de->d_ino, kind);
			if (err)
				return err;
			note_position(d, name, len, (uint16_t)si, pos++);
		}
	}
	return 0;
}

/* Put the visible names in the kernel's listing order. */
int ovl_index_finish(struct ovl_dir *d)
{
	struct ovl_build *b = d->build;
	uint32_t bottom = d->nstack ? d->nstack - 1 : 0, nbottom = 0, n = 0;
	struct ovl_ent **byseq, **order;

	byseq = calloc(d->nents ? d->nents : 1, sizeof(*byseq));
	if (!byseq)
		return -ENOMEM;
	for (uint32_t i = 0; d->table && i <= d->mask; i++) {
		struct ovl_ent *e = d->table[i];

		if (e) {
			uint32_t seq = ovl_ent_seq(e);

			byseq[seq] = e;
			e->ext = NULL;
			if (!(e->flags & OVL_E_WHITEOUT) && b->last[seq] == bottom &&
			    b->pos[seq] + 1 > nbottom)
				nbottom = b->pos[seq] + 1;
		}
	}
	order = calloc(d->nents ? d->nents : 1, sizeof(*order));
	struct ovl_ent **slots = calloc(nbottom ? nbottom : 1, sizeof(*slots));

	if (!order || !slots) {
		free(byseq);
		free(order);
		free(slots);
		return -ENOMEM;
	}
	/* Bottom names by their position in the bottom layer... */
	for (uint32_t i = 0; i < d->nents; i++) {
		struct ovl_ent *e = byseq[i];

		if (!(e->flags & OVL_E_WHITEOUT) && b->last[i] == bottom)
			slots[b->pos[i]] = e;
	}
	for (uint32_t i = 0; i < nbottom; i++)
		if (slots[i])
			order[n++] = slots[i];
	/* ...then the rest by first appearance, top-down. */
	for (uint32_t i = 0; i < d->nents; i++) {
		struct ovl_ent *e = byseq[i];

		if (!(e->flags & OVL_E_WHITEOUT) && b->last[i] != bottom)
			order[n++] = e;
	}
	/* Each entry's occurrences in one run, in layer order. */
	if (b->nocc) {
		uint32_t *occ = malloc(b->nocc * sizeof(*occ)), off = 0;

		if (!occ) {
			free(byseq);
			free(slots);
			free(order);
			return -ENOMEM;
		}
		for (uint32_t i = 0; i < d->nents; i++) {
			byseq[i]->occ = off;
			off += byseq[i]->nocc;
		}
		for (uint32_t i = 0; i < d->nents; i++)
			byseq[i]->nocc = 0;
		for (uint32_t i = 0; i < b->nocc; i++) {
			struct ovl_ent *e = byseq[b->occs[i].seq];

			occ[e->occ + e->nocc++] = b->occs[i].occ;
		}
		d->occ = occ;
		d->nocc = b->nocc;
		d->bytes += b->nocc * sizeof(*occ);
	}
	free(byseq);
	free(slots);
	if (n < d->nents) {
		struct ovl_ent **fit = realloc(order, (n ? n : 1) * sizeof(*order));

		if (fit)
			order = fit;
	}
	d->order = order;
	d->norder = n;
	d->bytes += (size_t)n * sizeof(*order);
	d->built = true;
	return 0;
}
