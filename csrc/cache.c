/* cache.c - memory of the lookup cache: arenas, per-directory name
 * indexes, directory nodes, the memory cap and the fd cache.
 *
 * Entries of one directory live in that directory's arena and die with it,
 * so dropping a directory (invalidation, or the cap emptying the cache) is
 * one walk of its subtree with no per-name frees.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ovl_internal.h"

struct ovl_arena_chunk {
	struct ovl_arena_chunk *next;
	size_t size;
	_Alignas(8) char data[];
};

#define OVL_ARENA_MIN 256
#define OVL_ARENA_MAX (256u << 10)

/* Start a new chunk able to hold size bytes: exactly that much for a
 * reservation, else half again the last chunk (so large directories take
 * few chunks and small ones waste little). */
static int arena_grow(struct ovl_arena *a, size_t size, bool exact)
{
	size_t cap = size;
	struct ovl_arena_chunk *c;

	if (!exact) {
		cap = a->cap ? a->cap + a->cap / 2 : OVL_ARENA_MIN;
		if (cap > OVL_ARENA_MAX)
			cap = OVL_ARENA_MAX;
		if (cap < size)
			cap = size;
	}
	c = malloc(sizeof(*c) + cap);
	if (!c)
		return -ENOMEM;
	c->next = a->head;
	c->size = cap;
	a->head = c;
	a->cap = cap;
	a->used = 0;
	a->bytes += sizeof(*c) + cap;
	return 0;
}

/* Does the current chunk have size bytes free? */
bool ovl_arena_room(const struct ovl_arena *a, size_t size)
{
	return a->head && a->used + size <= a->cap;
}

/* Make sure the next size bytes of allocations fit in the current chunk,
 * so a batch of known size costs no slack.  Return 0 or -ENOMEM. */
int ovl_arena_reserve(struct ovl_arena *a, size_t size)
{
	if (ovl_arena_room(a, size))
		return 0;
	return arena_grow(a, size, true);
}

void *ovl_arena_alloc(struct ovl_arena *a, size_t size)
{
	void *p;

	size = (size + 7) & ~(size_t)7;
	if ((!a->head || a->used + size > a->cap) && arena_grow(a, size, false))
		return NULL;
	p = a->head->data + a->used;
	a->used += size;
	return p;
}

void ovl_arena_free(struct ovl_arena *a)
{
	struct ovl_arena_chunk *c = a->head, *next;

	for (; c; c = next) {
		next = c->next;
		free(c);
	}
	memset(a, 0, sizeof(*a));
}

/* FNV-1a: short names, few cycles, good enough spread for linear probing. */
uint32_t ovl_name_hash(const char *name, size_t len)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)name[i];
		h *= 16777619u;
	}
	return h;
}

struct ovl_ent *ovl_dir_find(const struct ovl_dir *d, const char *name,
			     size_t len, uint32_t hash)
{
	uint32_t i;
	struct ovl_ent *e;

	if (!d->table)
		return NULL;
	for (i = hash & d->mask; (e = d->table[i]); i = (i + 1) & d->mask)
		if (e->hash == hash && e->namelen == len && !memcmp(e->name, name, len))
			return e;
	return NULL;
}

static int table_grow(struct ovl_dir *d)
{
	uint32_t nsize = d->table ? (d->mask + 1) * 2 : 8;
	struct ovl_ent **t = calloc(nsize, sizeof(*t));

	if (!t)
		return -ENOMEM;
	if (d->table) {
		for (uint32_t i = 0; i <= d->mask; i++) {
			struct ovl_ent *e = d->table[i];
			uint32_t j;

			if (!e)
				continue;
			for (j = e->hash & (nsize - 1); t[j]; j = (j + 1) & (nsize - 1))
				;
			t[j] = e;
		}
		d->bytes -= (size_t)(d->mask + 1) * sizeof(*t);
		free(d->table);
	}
	d->table = t;
	d->mask = nsize - 1;
	d->bytes += (size_t)nsize * sizeof(*t);
	return 0;
}

/* Add a name that ovl_dir_find did not find.  Return the zeroed entry. */
struct ovl_ent *ovl_dir_insert(struct ovl_dir *d, const char *name, size_t len,
			       uint32_t hash)
{
	struct ovl_ent *e;
	uint32_t i;

	/* Keep the load factor at most 3/4 (7/8 in tables of up to 16 slots,
	 * where a probe sequence is short anyway). */
	if (!d->table || (d->mask < 16 ? (d->nents + 1) * 8 > (d->mask + 1) * 7 :
					 (d->nents + 1) * 4 > (d->mask + 1) * 3)) {
		if (table_grow(d))
			return NULL;
	}
	e = ovl_arena_alloc(&d->arena, sizeof(*e) + len + 1);
	if (!e)
		return NULL;
	memset(e, 0, sizeof(*e));
	e->hash = hash;
	e->namelen = (uint16_t)len;
	e->ext = (void *)(uintptr_t)d->nents;	/* first-appearance number */
	memcpy(e->name, name, len);
	e->name[len] = '\0';
	for (i = hash & d->mask; d->table[i]; i = (i + 1) & d->mask)
		;
	d->table[i] = e;
	d->nents++;
	return e;
}

/* The occurrence bits (enum ovl_occ_kind) of e in stack layer si. */
int ovl_occ_bits(const struct ovl_dir *d, const struct ovl_ent *e, uint32_t si)
{
	const uint32_t *o = d->occ + e->occ;
	uint32_t lo = 0, hi = e->nocc;

	if (si == e->top) {
		int kind = e->flags & OVL_E_WHITEOUT ?
			   (e->dtype == DT_UNKNOWN ? OK_NONE : OK_WH) :
			   e->dtype == DT_DIR ? OK_DIR : e->dtype == DT_REG ? OK_REG : OK_OTHER;

		return kind | (e->flags & OVL_E_TOPOCI ? OK_OCI : 0);
	}
	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;

		if (OVL_OCC_SI(o[mid]) < si)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < e->nocc && OVL_OCC_SI(o[lo]) == si ? (int)(o[lo] & 0xf) : OK_NONE;
}

struct ovl_dir *ovl_dir_new(struct ovl_stack *s, struct ovl_dir *parent,
			    struct ovl_ent *ent)
{
	struct ovl_dir *d = calloc(1, sizeof(*d));

	(void)s;
	if (!d)
		return NULL;
	d->parent = parent;
	d->ent = ent;
	if (parent)
		d->path = ovl_path_join(parent->path, parent->pathlen, ent->name,
					ent->namelen);
	else
		d->path = strdup("");
	if (!d->path) {
		free(d);
		return NULL;
	}
	d->pathlen = (uint32_t)strlen(d->path);
	d->bytes = sizeof(*d) + d->pathlen + 1;
	return d;
}

/* Bring the stack's totals up to date with d's memory and names (after
 * building it, or after metadata was added to its arena). */
void ovl_dir_account(struct ovl_stack *s, struct ovl_dir *d)
{
	size_t now = d->bytes + d->arena.bytes;

	if (!d->in_cache) {
		d->in_cache = true;
		s->ndirs++;
	}
	s->bytes += now - d->accounted;
	s->nents += d->nents - d->counted_ents;
	d->accounted = now;
	d->counted_ents = d->nents;
}

void ovl_dir_free(struct ovl_stack *s, struct ovl_dir *d)
{
	if (!d)
		return;
	for (uint32_t i = 0; d->table && i <= d->mask; i++) {
		struct ovl_ent *e = d->table[i];

		if (d->built && e && e->dtype == DT_DIR && e->ext)
			ovl_dir_free(s, e->ext);
	}
	ovl_fdcache_drop(s, d);
	if (d->ent)
		d->ent->ext = NULL;
	if (d->in_cache) {
		s->bytes -= d->accounted;
		s->nents -= d->counted_ents;
		s->ndirs--;
	}
	for (uint32_t i = 0; d->paths && i < d->nstack; i++)
		free(d->paths[i]);
	free(d->paths);
	free(d->stack);
	free(d->fill);
	free(d->table);
	free(d->order);
	free(d->occ);
	free(d->path);
	ovl_arena_free(&d->arena);
	free(d);
}

/* Forget everything.  Callers hold the write lock (or own the stack). */
void ovl_cache_flush(struct ovl_stack *s)
{
	if (s->root)
		ovl_dir_free(s, s->root);
	s->root = NULL;
	memset(s->root_ent, 0, sizeof(*s->root_ent));
	s->root_ent->dtype = DT_DIR;
	for (int i = 0; i < OVL_FDCACHE; i++) {
		if (s->fdc[i].fd >= 0)
			close(s->fdc[i].fd);
		s->fdc[i].fd = -1;
		s->fdc[i].dir = NULL;
	}
	ovl_cache_changed(s);
}

/* Forget a directory whose index no longer matches the layers (and all
 * below it); the root means everything. */
void ovl_cache_drop_dir(struct ovl_stack *s, struct ovl_dir *d)
{
	if (!d)
		return;
	if (d == s->root) {
		ovl_cache_flush(s);
		return;
	}
	ovl_dir_free(s, d);
	ovl_cache_changed(s);
}

/* Something cached changed or went: listings handed out before are stale
 * (ovl_cache_generation).  Every change of the generation is made here. */
void ovl_cache_changed(struct ovl_stack *s)
{
	__atomic_add_fetch(&s->generation, 1, __ATOMIC_RELEASE);
}

/* Enforce the memory cap after a write-locked operation: over the cap (or
 * with caching off) the whole cache is emptied. */
void ovl_cache_flush_if_over(struct ovl_stack *s)
{
	if ((s->cfg & OVL_CFG_NO_CACHE) || s->bytes > s->max_bytes) {
		if (!(s->cfg & OVL_CFG_NO_CACHE))
			ovl_atomic_inc(&s->flushes);
		ovl_cache_flush(s);
	}
}

/* An O_PATH fd of stack layer si of d, kept for a few uses in a row (reading
 * the metadata of many names of one directory).  Write lock held.  The fd
 * belongs to the cache: do not close it. */
int ovl_fdcache_get(struct ovl_stack *s, const struct ovl_dir *d, uint32_t si)
{
	/* Direct-mapped: lookups in random order over many directories
	 * mostly find their slot, and a miss costs one open. */
	uintptr_t h = ((uintptr_t)d >> 4) * 2654435761u + si;
	struct ovl_fdslot *slot = &s->fdc[h % OVL_FDCACHE];
	int fd;

	if (slot->fd >= 0 && slot->dir == d && slot->si == si)
		return slot->fd;
	fd = ovl_layer_open(s, d->stack[si].layer, ovl_dl_path(d, si),
			    O_PATH | O_DIRECTORY);
	if (fd < 0)
		return fd;
	if (slot->fd >= 0)
		close(slot->fd);
	slot->dir = d;
	slot->si = si;
	slot->fd = fd;
	return fd;
}

void ovl_fdcache_drop(struct ovl_stack *s, const struct ovl_dir *d)
{
	for (int i = 0; i < OVL_FDCACHE; i++) {
		if (s->fdc[i].fd >= 0 && s->fdc[i].dir == d) {
			close(s->fdc[i].fd);
			s->fdc[i].fd = -1;
			s->fdc[i].dir = NULL;
		}
	}
}

void ovl_cache_stats(struct ovl_stack *s, struct ovl_cache_stats *out)
{
	pthread_rwlock_rdlock(&s->lock);
	out->hits = ovl_atomic_get(&s->hits);
	out->misses = ovl_atomic_get(&s->misses);
	out->entries = s->nents;
	out->dirs = s->ndirs;
	out->bytes = s->bytes;
	out->max_bytes = s->max_bytes;
	out->generation = ovl_atomic_get(&s->generation);
	out->flushes = ovl_atomic_get(&s->flushes);
	pthread_rwlock_unlock(&s->lock);
}

uint64_t ovl_cache_generation(const struct ovl_stack *s)
{
	return __atomic_load_n(&s->generation, __ATOMIC_ACQUIRE);
}
