export { UpstreamSession, UpstreamError, openSession } from './session.ts';
export type { MessageSource, SessionOptions, SessionTimeouts, StartTlsMode, TlsInfo, UpstreamErrorKind } from './session.ts';
