#!/usr/bin/env bash
# The test command: set up, check notebooks are output-free and the library is in sync, build the docs, run every
# notebook (nbdev-test) and the pytest suite. Exits non-zero on any failure.
source "$(dirname "$0")/setup.sh"
fail=0
echo "== notebooks carry no outputs (as committed: running and saving an example in place is not a failure;"
echo "   nbs/index.ipynb, the docs home, keeps small outputs: tests/test_docs.py checks their size)"
committed=$(mktemp -d)
stripped=$(ls nbs/*.ipynb examples/*.ipynb | grep -vx nbs/index.ipynb)
for f in $stripped; do
  mkdir -p "$committed/$(dirname "$f")"
  if git cat-file -e ":$f" 2>/dev/null; then git show ":$f" > "$committed/$f"; else cp "$f" "$committed/$f"; fi
done
# shellcheck disable=SC2086
if ! (cd "$committed" && nbstripout --verify --keep-id $stripped); then
  echo "FAIL: notebooks carry outputs — run: nbstripout --keep-id nbs/*.ipynb examples/*.ipynb && nbdev-clean"; fail=1
fi
rm -rf "$committed"
before=$(cat nbs/*.ipynb | sha1sum); nbdev-clean >/dev/null 2>&1 || true; after=$(cat nbs/*.ipynb | sha1sum)
if [ "$before" != "$after" ]; then echo "FAIL: nbdev-clean changed notebooks — commit the cleaned notebooks"; fail=1; fi
echo "== exported library in sync with the notebooks"
snap=$(mktemp -d); cp -r longcat_nb "$snap/"
nbdev-export
if ! diff -r -x __pycache__ "$snap/longcat_nb" longcat_nb >/dev/null; then
  diff -r -x __pycache__ "$snap/longcat_nb" longcat_nb | head -20
  echo "FAIL: longcat_nb/ was out of sync with nbs/ — run nbdev-export and commit"; fail=1
fi
rm -rf "$snap"
echo "== docs: the HTML site into _docs/ (tools/docs.py site; tests/test_docs.py checks it in Chromium and the README)"
t0=$(date +%s)
if python tools/docs.py site; then export DOCS_SITE="$PWD/_docs"; else fail=1; fi   # tests/test_docs.py opens it
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; } ||
    echo "WARNING: could not install chromium and chromium-driver: tests/test_docs.py skips its browser check"
fi
echo "docs: $(( $(date +%s) - t0 )) s"
echo "== notebooks (nbdev-test)"
nbdev-test --n-workers "${NB_WORKERS:-2}" --timing || fail=1
echo "== pytest"
rc=0; python -m pytest -q tests || rc=$?
[ $rc -eq 0 ] || [ $rc -eq 5 ] || fail=1
[ $fail -eq 0 ] && echo "ALL CHECKS PASSED" || echo "SOME CHECKS FAILED"
exit $fail
