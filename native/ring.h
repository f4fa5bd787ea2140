/* Placeholder core: replaced by the SPSC ring (issue 3). Proves the native build path. */
#ifndef STREAMLOAD_RING_H
#define STREAMLOAD_RING_H
int sl_ring_abi_version(void);
#endif
