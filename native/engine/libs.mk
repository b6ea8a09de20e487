# understudy-engine links zlib (crc32) and protobuf-c, both in LDLIBS_BASE.
LDLIBS_engine :=
