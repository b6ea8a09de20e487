/*
 * Kernel ABI that Debian 12's 6.1 uapi headers lack, written from the kernel's
 * uapi (include/uapi/linux/fs.h, userfaultfd.h, sched.h of 6.7+) and checked on
 * the running kernel by `understudy check`. Each definition is guarded so a
 * newer header's own wins; values are ABI and never change.
 */
#ifndef UNDERSTUDY_KABI_H
#define UNDERSTUDY_KABI_H

#include <linux/types.h>
#include <linux/ioctl.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

/* ---- userfaultfd (include/uapi/linux/userfaultfd.h) ---- */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13) /* 6.4 */
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14) /* 6.6 */
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15) /* 6.7 */
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16) /* 6.8 */
#endif

/* ---- /proc/PID/pagemap entries (Documentation/admin-guide/mm/pagemap.rst) ---- */
#define KABI_PM_PFN_MASK ((1ULL << 55) - 1)
#define KABI_PM_SOFT_DIRTY (1ULL << 55)
#define KABI_PM_MMAP_EXCLUSIVE (1ULL << 56)
#define KABI_PM_UFFD_WP (1ULL << 57) /* pte is uffd-wp write-protected */
#define KABI_PM_FILE (1ULL << 61)
#define KABI_PM_SWAP (1ULL << 62)
#define KABI_PM_PRESENT (1ULL << 63)

/* ---- PAGEMAP_SCAN ioctl on /proc/PID/pagemap (6.7+) ---- */
#ifndef PAGEMAP_SCAN
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)

/* One run of pages [start, end) sharing the categories asked for. */
struct page_region {
	__u64 start;
	__u64 end;
	__u64 categories;
};

#define PM_SCAN_WP_MATCHING (1 << 0)   /* write-protect the matched pages */
#define PM_SCAN_CHECK_WPASYNC (1 << 1) /* fail on a page without async WP */

struct pm_scan_arg {
	__u64 size;  /* sizeof(struct pm_scan_arg) */
	__u64 flags; /* PM_SCAN_* */
	__u64 start; /* range to walk, page aligned */
	__u64 end;
	__u64 walk_end; /* out: where the walk stopped */
	__u64 vec;	/* struct page_region array */
	__u64 vec_len;
	__u64 max_pages;	   /* 0: no limit */
	__u64 category_inverted;   /* PAGE_IS_* to negate before matching */
	__u64 category_mask;	   /* all of these must match */
	__u64 category_anyof_mask; /* at least one of these must match */
	__u64 return_mask;	   /* categories reported in page_region */
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif
#ifndef PAGE_IS_GUARD
#define PAGE_IS_GUARD (1 << 8) /* 6.14 */
#endif

/* ---- clone3 (include/uapi/linux/sched.h), with set_tid (5.5) and cgroup (5.7) ---- */
struct kabi_clone_args {
	__aligned_u64 flags;
	__aligned_u64 pidfd;
	__aligned_u64 child_tid;
	__aligned_u64 parent_tid;
	__aligned_u64 exit_signal;
	__aligned_u64 stack;
	__aligned_u64 stack_size;
	__aligned_u64 tls;
	__aligned_u64 set_tid; /* pid_t[], innermost namespace first */
	__aligned_u64 set_tid_size;
	__aligned_u64 cgroup;
};
#define KABI_CLONE_ARGS_SIZE_VER0 64
#define KABI_CLONE_ARGS_SIZE_VER1 80
#define KABI_CLONE_ARGS_SIZE_VER2 88

/* ---- raw syscall wrappers (errno-setting, -1 on failure) ---- */
static inline long kabi_clone3(struct kabi_clone_args *args, size_t size)
{
	return syscall(SYS_clone3, args, size);
}

static inline int kabi_pidfd_open(pid_t pid, unsigned int flags)
{
	return (int)syscall(SYS_pidfd_open, pid, flags);
}

static inline int kabi_pidfd_getfd(int pidfd, int targetfd, unsigned int flags)
{
	return (int)syscall(SYS_pidfd_getfd, pidfd, targetfd, flags);
}

static inline int kabi_userfaultfd(int flags)
{
	return (int)syscall(SYS_userfaultfd, flags);
}

#endif
