/* The identity of an executable or library file: its GNU build-id. */
#ifndef UNDERSTUDY_ELFID_H
#define UNDERSTUDY_ELFID_H

#include <stddef.h>
#include <stdint.h>

/* Writes the NT_GNU_BUILD_ID note of the 64-bit ELF file open at fd (size
 * bytes long) as lowercase hex into out (olen bytes, NUL-terminated), or ""
 * when the file is not a 64-bit ELF or has no build-id. Reads with pread,
 * so the fd's offset is left alone. */
void elf_gnu_build_id(int fd, uint64_t size, char *out, size_t olen);

#endif
