LDLIBS_check := -lnetfilter_queue
