// mailauth's SPF record validator (the one its strict mode runs before evaluating) has no type
// declarations: the relay runs it term by term to name the term a syntax error is in.
declare module 'mailauth/lib/spf/syntax.js' {
  /** The first syntax error of the terms (a record without "v=spf1", split on SP), or false. */
  export function validateTerms(terms: string[]): string | false;
}
