// mailauth's body canonicalization (the code its own verifier runs) has no type declarations.
declare module 'mailauth/lib/dkim/body/index.js' {
  export interface BodyHash {
    update(chunk: Buffer): void;
    digest(encoding: 'base64'): string;
  }
  export function dkimBody(canonicalization: string, algorithm: string, maxBodyLength: number | false): BodyHash;
}
