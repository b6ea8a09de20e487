# Builds the kernel-side and native parts into build/. Driven by scripts/build;
# every target is incremental, so a rebuild with nothing changed does nothing.
BUILD      := build
CLANG      ?= clang
BPFTOOL    ?= bpftool
CC         ?= gcc
PROTOC_C   ?= protoc-c

# Native C: warnings are errors. SANITIZE=address builds every binary under ASan.
CFLAGS     := -O2 -g -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-missing-field-initializers \
              -I$(BUILD)/bpf -I$(BUILD)/proto-c -Inative/common -MMD -MP
ifdef SANITIZE
CFLAGS     += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer
LDFLAGS    += -fsanitize=$(SANITIZE)
endif

BPF_CFLAGS := -O2 -g -target bpf -D__TARGET_ARCH_x86 -I$(BUILD) -Ibpf -Wall -Werror

BPF_SRCS   := $(wildcard bpf/*.bpf.c)
BPF_OBJS   := $(patsubst bpf/%.bpf.c,$(BUILD)/bpf/%.bpf.o,$(BPF_SRCS))
BPF_SKELS  := $(patsubst bpf/%.bpf.c,$(BUILD)/bpf/%.skel.h,$(BPF_SRCS))

PROTO_SRCS := $(shell find proto -name '*.proto' 2>/dev/null | sort)
PROTO_C    := $(patsubst proto/%.proto,$(BUILD)/proto-c/%.pb-c.c,$(PROTO_SRCS))
PROTO_C_OBJS := $(patsubst %.c,%.o,$(PROTO_C))

# Every native/<name>/ folder except common/ is one binary: build/native/understudy-<name>.
NATIVE_DIRS := $(filter-out common,$(notdir $(patsubst %/,%,$(wildcard native/*/))))
NATIVE_BINS := $(patsubst %,$(BUILD)/native/understudy-%,$(NATIVE_DIRS))
COMMON_SRCS := $(wildcard native/common/*.c)
COMMON_OBJS := $(patsubst native/%.c,$(BUILD)/obj/%.o,$(COMMON_SRCS))

# Libraries each binary links; a folder may add its own in native/<name>/libs.mk
# as LDLIBS_<name> := ...
LDLIBS_BASE := -lbpf -lelf -lz -lprotobuf-c
-include $(wildcard native/*/libs.mk)

# Test fixtures: small self-verifying C programs, one file each.
FIXTURE_SRCS := $(wildcard test/fixtures/*.c)
FIXTURE_BINS := $(patsubst test/fixtures/%.c,$(BUILD)/fixtures/%,$(FIXTURE_SRCS))

.PHONY: all bpf native fixtures clean
all: bpf native fixtures
bpf: $(BPF_OBJS) $(BPF_SKELS)
native: $(BUILD)/error-codes.ok $(NATIVE_BINS)
fixtures: $(FIXTURE_BINS)

$(BUILD)/fixtures/%: test/fixtures/%.c $(wildcard test/fixtures/*.h)
	@mkdir -p $(dir $@)
	$(CC) -O1 -g -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror -pthread -o $@ $< -lm

# Every "E_..." literal under native/ must be a value of errors.proto's enum
# ErrorCode; the check prints file:line of any that is not.
$(BUILD)/error-codes.ok: scripts/check-error-codes proto/understudy/v1/errors.proto $(shell find native -name '*.[ch]')
	@mkdir -p $(dir $@)
	scripts/check-error-codes
	@touch $@

# vmlinux.h follows the running kernel: scripts/build rewrites kernel-release
# only when `uname -r` changes, which triggers a new dump.
$(BUILD)/vmlinux.h: $(BUILD)/kernel-release
	$(BPFTOOL) btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp
	mv $@.tmp $@

$(BUILD)/bpf/%.bpf.o: bpf/%.bpf.c $(BUILD)/vmlinux.h $(wildcard bpf/*.h)
	@mkdir -p $(dir $@)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@.tmp.o
	$(BPFTOOL) gen object $@ $@.tmp.o
	rm -f $@.tmp.o

$(BUILD)/bpf/%.skel.h: $(BUILD)/bpf/%.bpf.o
	$(BPFTOOL) gen skeleton $< name $(subst -,_,$*)_bpf > $@.tmp
	mv $@.tmp $@

$(BUILD)/proto-c/%.pb-c.c $(BUILD)/proto-c/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/proto-c
	$(PROTOC_C) --proto_path=proto --c_out=$(BUILD)/proto-c $<

$(BUILD)/proto-c/%.pb-c.o: $(BUILD)/proto-c/%.pb-c.c
	$(CC) $(filter-out -Werror -Wextra,$(CFLAGS)) -c $< -o $@

$(BUILD)/obj/%.o: native/%.c $(BPF_SKELS) $(PROTO_C)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# Objects of native/<name>/: a function, so the % of patsubst is not taken for
# the pattern rule's stem.
native_objs = $(patsubst native/%.c,$(BUILD)/obj/%.o,$(wildcard native/$(1)/*.c))

# Keep intermediate files (objects, generated protobuf-c sources): make would
# delete them after each build, so the next one would redo everything.
.SECONDARY:

.SECONDEXPANSION:
$(BUILD)/native/understudy-%: $$(call native_objs,$$*) $(COMMON_OBJS) $(PROTO_C_OBJS) | $(BUILD)/error-codes.ok
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS_BASE) $(LDLIBS_$*)

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
