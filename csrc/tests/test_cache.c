/* test_cache.c - hits and misses, invalidation, the memory cap, and
 * concurrent readers. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "testutil.h"
#include "../ovl_internal.h"

static void test_counters_and_invalidate(void)
{
	const char *lw[] = { "l1", "l2" };
	struct ovl_stack *s;
	struct ovl_cache_stats st;

	t_file("l1/d/a", "");
	t_file("l2/d/b", "");
	s = t_open(lw, 2, 0);
	CHECK_EQ(t_layer(s, "d/a", 0), 1);
	CHECK_EQ(t_layer(s, "d/a", OVL_LOOKUP_CACHED), 1);
	CHECK_EQ(t_layer(s, "d/new", OVL_LOOKUP_CACHED), -ENOENT);	/* negative, cached */
	ovl_cache_stats(s, &st);
	CHECK_EQ(st.misses, 1);
	CHECK_EQ(st.hits, 2);
	CHECK_EQ(st.entries, 3);	/* d, a, b */
	CHECK(st.bytes > 0);
	t_file("l2/d/new", "");
	CHECK_EQ(t_layer(s, "d/new", 0), -ENOENT);	/* not seen until invalidated */
	CHECK_EQ(ovl_invalidate(s, "d/new"), 0);
	CHECK_EQ(t_layer(s, "d/new", OVL_LOOKUP_CACHED), -EAGAIN);
	CHECK_EQ(t_layer(s, "d/new", 0), 2);
	CHECK_EQ(ovl_invalidate(s, NULL), 0);
	ovl_cache_stats(s, &st);
	CHECK_EQ(st.entries, 0);
	CHECK_EQ(st.bytes, 0);
	CHECK(st.generation >= 2);
	ovl_stack_close(s);
}

static void test_cap(void)
{
	const char *lw[] = { t_path("l1") };
	char *p = strdup(lw[0]);
	struct ovl_config cfg = { .lowers = (const char *const *)&p, .nlowers = 1,
				  .whiteouts = OVL_WHITEOUT_AUTO, .cache_max_bytes = 4096 };
	struct ovl_stack *s;
	struct ovl_cache_stats st;
	char name[64];

	for (int i = 0; i < 200; i++) {
		snprintf(name, sizeof(name), "l1/d%d/f", i % 20);
		t_file(name, "x");
	}
	CHECK_EQ(ovl_stack_open(&cfg, &s, NULL), 0);
	for (int i = 0; i < 20; i++) {
		snprintf(name, sizeof(name), "d%d/f", i);
		CHECK_EQ(t_layer(s, name, 0), 1);
	}
	ovl_cache_stats(s, &st);
	CHECK(st.flushes > 0);
	CHECK(st.bytes <= 4096 || st.dirs <= 2);
	ovl_stack_close(s);
	free(p);
}

struct worker {
	struct ovl_stack *s;
	int errors;
};

static void *reader(void *arg)
{
	struct worker *w = arg;
	char name[64];

	for (int i = 0; i < 3000; i++) {
		int k = (i * 7) % 50;

		snprintf(name, sizeof(name), "d%d/f%d", k % 10, k);
		if (t_layer(w->s, name, 0) != 1 + (k % 3))
			w->errors++;
		if (i % 500 == 0)
			ovl_invalidate(w->s, i % 1000 ? name : NULL);
	}
	return NULL;
}

static void test_threads(void)
{
	const char *lw[] = { "l1", "l2", "l3" };
	char name[64];
	struct ovl_stack *s;
	pthread_t th[8];
	struct worker w[8];

	for (int k = 0; k < 50; k++) {
		snprintf(name, sizeof(name), "l%d/d%d/f%d", 1 + k % 3, k % 10, k);
		t_file(name, "x");
	}
	s = t_open(lw, 3, 0);
	for (int i = 0; i < 8; i++) {
		w[i] = (struct worker){ .s = s };
		pthread_create(&th[i], NULL, reader, &w[i]);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		CHECK_EQ(w[i].errors, 0);
	}
	ovl_stack_close(s);
}

/* The compact metadata encoding must give back exactly what it was given. */
static void test_stat_encoding(void)
{
	struct stat cases[4], out;
	struct ovl_arena a = { 0 };

	memset(cases, 0, sizeof(cases));
	cases[0].st_mode = S_IFREG | 0644;
	cases[0].st_nlink = 1;
	cases[0].st_blksize = 4096;
	cases[0].st_mtim.tv_sec = 1790000000;
	cases[0].st_mtim.tv_nsec = 123456789;
	cases[0].st_atim = cases[0].st_mtim;
	cases[0].st_ctim = cases[0].st_mtim;
	cases[1] = cases[0];
	cases[1].st_mode = S_IFCHR | 04755;
	cases[1].st_nlink = 70000;
	cases[1].st_uid = 4294967294u;
	cases[1].st_gid = 65534;
	cases[1].st_rdev = makedev(4095, 1048575);
	cases[1].st_blksize = 65536;
	cases[1].st_size = (off_t)1 << 50;
	cases[1].st_blocks = 123;
	cases[1].st_atim.tv_sec = -5;	/* before the epoch */
	cases[1].st_ctim.tv_sec = 1790000100;
	cases[2] = cases[1];
	cases[2].st_mtim.tv_sec = (time_t)1 << 40;	/* past 2262: kept exactly */
	cases[2].st_mtim.tv_nsec = 999999999;
	cases[3] = cases[0];
	cases[3].st_atim.tv_sec = -((time_t)1 << 36);
	for (int i = 0; i < 4; i++) {
		struct ovl_fill *f = ovl_fill_new(&a, &cases[i], 8);

		CHECK(f != NULL);
		if (!f)
			continue;
		CHECK(f->len <= OVL_STAT_MAX);
		memset(&out, 0xa5, sizeof(out));
		ovl_fill_stat(f, &out);
		CHECK_EQ(out.st_mode, cases[i].st_mode);
		CHECK_EQ(out.st_nlink, cases[i].st_nlink);
		CHECK_EQ(out.st_uid, cases[i].st_uid);
		CHECK_EQ(out.st_gid, cases[i].st_gid);
		CHECK_EQ(out.st_rdev, cases[i].st_rdev);
		CHECK_EQ(out.st_blksize, cases[i].st_blksize);
		CHECK_EQ(out.st_size, cases[i].st_size);
		CHECK_EQ(out.st_blocks, cases[i].st_blocks);
		CHECK_EQ(out.st_atim.tv_sec, cases[i].st_atim.tv_sec);
		CHECK_EQ(out.st_atim.tv_nsec, cases[i].st_atim.tv_nsec);
		CHECK_EQ(out.st_mtim.tv_sec, cases[i].st_mtim.tv_sec);
		CHECK_EQ(out.st_mtim.tv_nsec, cases[i].st_mtim.tv_nsec);
		CHECK_EQ(out.st_ctim.tv_sec, cases[i].st_ctim.tv_sec);
		CHECK_EQ(out.st_ctim.tv_nsec, cases[i].st_ctim.tv_nsec);
		CHECK(((uintptr_t)ovl_fill_extra(f) & 7) == 0);
	}
	CHECK(ovl_fill_new(&a, &cases[0], 0)->len < 24);	/* the common case is small */
	ovl_arena_free(&a);
}

int main(void)
{
	int rc = 0;

	test_stat_encoding();
	t_setup("counters");
	test_counters_and_invalidate();
	rc |= t_teardown();
	t_setup("cap");
	test_cap();
	rc |= t_teardown();
	t_setup("threads");
	test_threads();
	rc |= t_teardown();
	return rc;
}
