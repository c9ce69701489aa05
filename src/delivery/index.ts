export { resolveDestination, routeDestination, type Destination, type NextHop } from './destination.ts';
export { connectDestination, type Connected, type ConnectOptions } from './connect.ts';
export { UpstreamPool, type UpstreamLease } from './pool.ts';
export { Shaper, providerOf, type ProviderConfig } from './shaping.ts';
export { classifyReply, playbook, Playbook, PlaybookError, CATEGORIES, STAGES } from './playbook.ts';
export type { Category, Classification, Permanence, PlaybookExample, PlaybookRule, Stage } from './playbook.ts';
