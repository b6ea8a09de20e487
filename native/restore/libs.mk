# understudy-restore links zlib (crc32) and protobuf-c, both in LDLIBS_BASE.
LDLIBS_restore := -lpthread
