export { resolveDestination, routeDestination, type Destination, type NextHop, type TlsPolicy } from './destination.ts';
export { connectDestination, type Connected, type ConnectOptions } from './connect.ts';
export { UpstreamPool, type UpstreamLease } from './pool.ts';
export { ShapingState, type SessionSlot, type Shaper, type ShapingLimits } from './shaping.ts';
export { Providers, type ProviderConfig } from './providers.ts';
export { Playbook, PlaybookError, CATEGORIES, STAGES } from './playbook.ts';
export type { Category, Classification, Permanence, PlaybookExample, PlaybookRule, Stage } from './playbook.ts';
// PolicyCache is the seam for a Redis-backed policy cache shared by replicas.
export { MtaSts, MemoryPolicyCache, SharedPolicyCache, type PolicyCache, type StsLookup, type StsPolicy } from './mta-sts.ts';
