"""Regenerates fuzz/corpus/jwt and the JWKS in the crates' fuzz_checks modules' FUZZ_JWKS
(written to /tmp/jwks.json): tokens signed with policy/tests/data/jwt/rsa-2048.pem.
Usage: python3 fuzz/make_jwt_seeds.py fuzz/corpus/jwt"""
import base64, json, os, subprocess, sys
key = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../policy/tests/data/jwt/rsa-2048.pem")
mod = subprocess.check_output(["openssl","rsa","-in",key,"-noout","-modulus"]).decode().strip().split("=")[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
n = b64(bytes.fromhex(mod)); e = b64((65537).to_bytes(3,"big"))
jwks = {"keys":[{"kty":"RSA","kid":"fuzz-rsa","alg":"RS256","use":"sig","n":n,"e":e}]}
open("/tmp/jwks.json","w").write(json.dumps(jwks, separators=(",",":")))
def sign(claims, kid="fuzz-rsa"):
    h = b64(json.dumps({"alg":"RS256","kid":kid,"typ":"JWT"},separators=(",",":")).encode())
    p = b64(json.dumps(claims,separators=(",",":")).encode())
    si = (h+"."+p).encode()
    sig = subprocess.run(["openssl","dgst","-sha256","-sign",key],input=si,capture_output=True).stdout
    return h+"."+p+"."+b64(sig)
iss = "https://issuer.example"
ca_claims = {"iss":iss,"aud":["warden-ca"],"sub":"system:serviceaccount:default:httpbin","exp":4102444800,"iat":1700000000,"nbf":1700000000,
  "kubernetes.io":{"namespace":"default","serviceaccount":{"name":"httpbin","uid":"1a2b"},"pod":{"name":"httpbin-1","uid":"3c4d"}}}
ra_claims = {"iss":iss,"sub":"alice","aud":["svc-a"],"exp":4102444800,"iat":1700000000,"scope":"read write","groups":["a","b"]}
out = sys.argv[1]
import os; os.makedirs(out, exist_ok=True)
open(out+"/k8s-service-account.jwt","w").write(sign(ca_claims))
open(out+"/request-authn.jwt","w").write(sign(ra_claims))
open(out+"/expired.jwt","w").write(sign(dict(ra_claims, exp=1600000000)))
open(out+"/unknown-kid.jwt","w").write(sign(ra_claims, kid="other"))
open(out+"/bad-signature.jwt","w").write(sign(ra_claims)[:-8]+"AAAAAAAA")
open(out+"/alg-none.jwt","w").write(b64(b'{"alg":"none"}')+"."+b64(json.dumps(ra_claims).encode())+".")
