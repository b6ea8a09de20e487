/* Kernel ABI the engine needs that Debian 12's 6.1 uapi headers lack.
 * Values checked against the kernel's include/uapi/linux/fs.h (PAGEMAP_SCAN,
 * 6.7+) and include/uapi/linux/userfaultfd.h (WP_UNPOPULATED 6.4+, WP_ASYNC 6.7+). */
#ifndef UNDERSTUDY_ENGINE_KABI_H
#define UNDERSTUDY_ENGINE_KABI_H
#include <linux/types.h>
#include <linux/ioctl.h>
#include <linux/userfaultfd.h>

#ifndef PAGEMAP_SCAN
#define PAGE_IS_WPALLOWED  (1ULL << 0)
#define PAGE_IS_WRITTEN    (1ULL << 1)
#define PAGE_IS_FILE       (1ULL << 2)
#define PAGE_IS_PRESENT    (1ULL << 3)
#define PAGE_IS_SWAPPED    (1ULL << 4)
#define PAGE_IS_PFNZERO    (1ULL << 5)
#define PAGE_IS_HUGE       (1ULL << 6)
#define PAGE_IS_SOFT_DIRTY (1ULL << 7)

struct page_region {
	__u64 start;
	__u64 end;
	__u64 categories;
};

#define PM_SCAN_WP_MATCHING   (1ULL << 0)
#define PM_SCAN_CHECK_WPASYNC (1ULL << 1)

struct pm_scan_arg {
	__u64 size;
	__u64 flags;
	__u64 start;
	__u64 end;
	__u64 walk_end;
	__u64 vec;
	__u64 vec_len;
	__u64 max_pages;
	__u64 category_inverted;
	__u64 category_mask;
	__u64 category_anyof_mask;
	__u64 return_mask;
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1ULL << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1ULL << 15)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

#ifndef PTRACE_GET_RSEQ_CONFIGURATION
#define PTRACE_GET_RSEQ_CONFIGURATION 0x420f
#endif
struct us_rseq_config {
	__u64 rseq_abi_pointer;
	__u32 rseq_abi_size;
	__u32 signature;
	__u32 flags;
	__u32 pad;
};

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef SYS_userfaultfd
#define SYS_userfaultfd 323
#endif

#endif
