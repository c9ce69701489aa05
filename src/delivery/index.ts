export { resolveDestination, routeDestination, matchesDomain, type Destination, type NextHop, type TlsPolicy, type HopAuth, type RoutingOptions } from './destination.ts';
export { connectDestination, type Connected, type ConnectOptions } from './connect.ts';
export { MtaSts, MemoryPolicyCache, mxMatches, type MtaStsOptions, type PolicyCache, type StsLookup, type StsPolicy } from './mta-sts.ts';
