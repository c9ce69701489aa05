export { resolveDestination, routeDestination, type Destination, type NextHop, type TlsPolicy } from './destination.ts';
export { connectDestination, type Connected, type ConnectOptions } from './connect.ts';
// PolicyCache is the seam for a Redis-backed policy cache shared by replicas.
export { MtaSts, MemoryPolicyCache, type PolicyCache, type StsLookup, type StsPolicy } from './mta-sts.ts';
