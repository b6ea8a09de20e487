/* Shared between bpf/check.bpf.c and native/check (understudy-check). */
#ifndef UNDERSTUDY_BPF_CHECK_H
#define UNDERSTUDY_BPF_CHECK_H

/* counters map slots */
#define CHECK_CNT_GETPPID 0 /* getppid exits of the target tgid */
#define CHECK_CNT_RB_SEQ 1  /* last ring buffer sequence number handed out */
#define CHECK_CNT_SLOTS 2

/* The ringbuf probe calls getpgid(CHECK_RB_ARG_BASE + i): values above any
 * pid_max, so the calls fail harmlessly with ESRCH, and mark our records. */
#define CHECK_RB_ARG_BASE 0x7ff00000ULL
#define CHECK_RB_ARG_SPAN 16
#define CHECK_RB_MAGIC 0x5553434bU /* "USCK" */

struct check_rb_record {
	__u32 magic;
	__u32 seq; /* 1, 2, 3, ... */
	__u32 tgid;
	__u32 pad;
	__u64 arg; /* getpgid's argument */
};

#endif
