#include "ring.h"
int sl_ring_abi_version(void) { return 1; }
