"""Verifies every DKIM signature of a message with dkimpy (an implementation independent of
mailauth), looking keys up in the JSON map given as argv[1] instead of DNS.
Reads the message on stdin; prints one line per signature and exits 0 only if all verify."""
import json
import sys

import dkim

records = json.loads(sys.argv[1])


def dnsfunc(name, timeout=5):
    return records.get(name.decode().rstrip('.'), '').encode()


message = sys.stdin.buffer.read()
verifier = dkim.DKIM(message)
count = len([line for line in message.split(b'\r\n\r\n', 1)[0].split(b'\r\n') if line.lower().startswith(b'dkim-signature:')])
ok = count > 0
for index in range(count):
    result = verifier.verify(idx=index, dnsfunc=dnsfunc)
    print(f'signature {index}: {"pass" if result else "fail"}')
    ok = ok and result
sys.exit(0 if ok else 1)
