// The Internet Message Format (RFC 5322) as the relay reads it: the header section parsed once
// into its fields, where it ends in a stream, the one reading of line ends that the body
// hash and the DATA encoder share, and what makes a message malformed. Ground floor: imports
// nothing from other src folders.
export { HeaderSection, HeaderSplitter, type HeaderField } from './header.ts';
export { LineEnds } from './line-ends.ts';
export { BodyScan, headerMalformation, MAX_LINE, type Malformation } from './malformed.ts';
