#!/bin/sh
# Seeds the image targets' corpora (fuzz/corpus/image_*/, xva/, vhd_stream/) with the
# third-party fixtures and small images qemu-img makes with each option.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fixtures="$here/../tests/fixtures/thirdparty"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in qcow2 vhd vhdx vmdk vdi; do mkdir -p "$here/corpus/image_$t"; done
mkdir -p "$here/corpus/xva" "$here/corpus/vhd_stream"
for f in "$fixtures"/*/*.zst; do
    name=$(basename "$f" .zst)
    case "$name" in
        *.qcow2) t=qcow2 ;; *.vhd) t=vhd ;; *.vmdk) t=vmdk ;; *.vdi) t=vdi ;; *) continue ;;
    esac
    zstd -qdc "$f" > "$here/corpus/image_$t/$(basename "$(dirname "$f")")-$name"
done
qemu-img create -q -f raw "$tmp/base.raw" 4M
qemu-io -f raw -c 'write -P 0x5a 0 64k' -c 'write -P 0x11 1M 4k' "$tmp/base.raw" >/dev/null
conv() { qemu-img convert -q "$@"; }
conv -O qcow2 -o cluster_size=512 "$tmp/base.raw" "$here/corpus/image_qcow2/c512.qcow2"
conv -c -O qcow2 -o compression_type=zstd "$tmp/base.raw" "$here/corpus/image_qcow2/zstd.qcow2"
conv -O qcow2 -o extended_l2=on "$tmp/base.raw" "$here/corpus/image_qcow2/extl2.qcow2"
conv -O vpc "$tmp/base.raw" "$here/corpus/image_vhd/dynamic.vhd"
cp "$here/corpus/image_vhd/dynamic.vhd" "$here/corpus/vhd_stream/dynamic.vhd"
conv -O vhdx "$tmp/base.raw" "$here/corpus/image_vhdx/dynamic.vhdx"
conv -O vhdx -o subformat=fixed "$tmp/base.raw" "$here/corpus/image_vhdx/fixed.vhdx"
conv -O vmdk -o subformat=streamOptimized "$tmp/base.raw" "$here/corpus/image_vmdk/stream.vmdk"
conv -O vdi "$tmp/base.raw" "$here/corpus/image_vdi/dynamic.vdi"
# A tiny XVA: ova.xml with one 1 MiB VDI and one block with its SHA-1.
mkdir -p "$tmp/x/Ref:5"
cat > "$tmp/x/ova.xml" <<'XML'
<value><struct><member><name>objects</name><value><array><data><value><struct><member><name>class</name><value>VDI</value></member><member><name>id</name><value>Ref:5</value></member><member><name>snapshot</name><value><struct><member><name>virtual_size</name><value>1048576</value></member></struct></value></member></struct></value></data></array></value></member></struct></value>
XML
head -c 1048576 /dev/zero | tr '\0' 'x' > "$tmp/x/Ref:5/00000000"
sha1sum < "$tmp/x/Ref:5/00000000" | cut -c1-40 > "$tmp/x/Ref:5/00000000.checksum"
(cd "$tmp/x" && tar --format=ustar -cf "$here/corpus/xva/one.xva" ova.xml Ref:5/00000000 Ref:5/00000000.checksum)
# Partition tables made by sfdisk: a GPT with two partitions, an MBR with an extended
# partition holding two logical ones (tiny sizes, so the EBR chain sits in the first
# 32 KiB). Each seed is an 8-byte claimed extra size, then the disk's first bytes.
mkdir -p "$here/corpus/partitions"
truncate -s 64M "$tmp/gpt.img"
printf 'label: gpt\nstart=2048, size=20480\nstart=22528, size=20480\n' | sfdisk -q "$tmp/gpt.img"
truncate -s 1M "$tmp/dos.img"
printf 'label: dos\nstart=8, size=16, type=83\nstart=32, size=200, type=5\nstart=40, size=16, type=83\nstart=64, size=16, type=83\n' | sfdisk -q "$tmp/dos.img"
for t in gpt:65536 dos:32768; do
  name=${t%%:*} keep=${t##*:}
  size=$(stat -c %s "$tmp/$name.img")
  { python3 -c "import struct,sys; sys.stdout.buffer.write(struct.pack('<Q', $size - $keep))"; head -c "$keep" "$tmp/$name.img"; } > "$here/corpus/partitions/$name"
done
echo "seeded $(find "$here/corpus" -type f | wc -l) files under $here/corpus"
