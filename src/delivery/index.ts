export { resolveDestination, routeDestination, type Destination, type NextHop } from './destination.ts';
export { connectDestination, type Connected, type ConnectOptions } from './connect.ts';
