#include <string.h>
#include "restore.h"
#include "service.h"
int svc_apply_stats(struct restorer *rs, uint32_t epoch, struct svc_result *out, struct apply_stats *st)
{
	(void)rs; (void)out; memset(st, 0, sizeof(*st));
	return fail("E_UNSUPPORTED", 0, "apply of epoch %u: not yet", epoch);
}
