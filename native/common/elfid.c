#include "elfid.h"

#include <elf.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void elf_gnu_build_id(int fd, uint64_t size, char *out, size_t olen)
{
	out[0] = 0;
	Elf64_Ehdr eh;
	if (pread(fd, &eh, sizeof(eh), 0) != sizeof(eh) || memcmp(eh.e_ident, ELFMAG, SELFMAG) || eh.e_ident[EI_CLASS] != ELFCLASS64)
		return;
	for (int i = 0; i < eh.e_phnum && i < 64; i++) {
		Elf64_Phdr ph;
		if (pread(fd, &ph, sizeof(ph), eh.e_phoff + (uint64_t)i * eh.e_phentsize) != sizeof(ph))
			return;
		if (ph.p_type != PT_NOTE || ph.p_filesz > 65536 || ph.p_offset + ph.p_filesz > size)
			continue;
		unsigned char nb[65536]; /* on the stack: callable from any thread */
		if (pread(fd, nb, ph.p_filesz, ph.p_offset) != (ssize_t)ph.p_filesz)
			return;
		size_t off = 0;
		while (off + sizeof(Elf64_Nhdr) <= ph.p_filesz) {
			Elf64_Nhdr *nh = (Elf64_Nhdr *)(nb + off);
			size_t name_off = off + sizeof(*nh);
			size_t desc_off = name_off + ((nh->n_namesz + 3) & ~3u);
			size_t next = desc_off + ((nh->n_descsz + 3) & ~3u);
			if (next > ph.p_filesz)
				break;
			if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 && !memcmp(nb + name_off, "GNU", 4)) {
				size_t o = 0;
				for (size_t k = 0; k < nh->n_descsz && o + 3 < olen; k++)
					o += snprintf(out + o, olen - o, "%02x", nb[desc_off + k]);
				return;
			}
			off = next;
		}
	}
}
