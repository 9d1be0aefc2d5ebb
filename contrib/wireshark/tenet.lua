-- Wireshark dissector for TENeT eTP messages, as `tenet tap --pcap FILE`
-- writes them: one message a packet (the 34-byte header, then the param),
-- link type USER0 (147).
--
--   wireshark -X lua_script:contrib/wireshark/tenet.lua capture.pcap
--   tshark -X lua_script:contrib/wireshark/tenet.lua -r capture.pcap -V
--
-- Fields: tenet.src, tenet.dst (DOMAINHEX:PORT), tenet.src.domain,
-- tenet.src.port, tenet.dst.domain, tenet.dst.port, tenet.mtype (with its
-- name), tenet.param.len; the param of the voucher messages (mtypes
-- 0x0200-0x02ff) and the card services (0x0100-0x01ff) as a BER-TLV tree:
-- tenet.tlv.tag, tenet.tlv.len, tenet.tlv.value, tenet.tlv.name (what the
-- field is in that message, where known). The layout is in docs/wire.md;
-- the mtype names below are the registry of crates/tenet-proto/src/mtype.rs
-- (a test keeps them equal).

local tenet = Proto("tenet", "TENeT eTP message")

local mtype_names = {
    [0x0001] = "echo-request",
    [0x0002] = "echo-reply",
    [0x0003] = "undeliverable",
    [0x0004] = "refused",
    [0x0101] = "verify-pin",
    [0x0102] = "pin-status",
    [0x0103] = "unblock-pin",
    [0x0104] = "change-pin",
    [0x0105] = "logout",
    [0x0106] = "card-info-request",
    [0x0107] = "card-info",
    [0x0108] = "set-time",
    [0x0109] = "lock",
    [0x0201] = "start-exchange",
    [0x0202] = "offer",
    [0x0203] = "accept",
    [0x0204] = "agreement",
    [0x0205] = "confirmation",
    [0x0206] = "commitment",
    [0x0207] = "recovery-request",
    [0x0208] = "admission",
    [0x0209] = "recover",
    [0x020a] = "mint",
    [0x020b] = "progress",
    [0x020c] = "balance-request",
    [0x020d] = "balances",
    [0x020e] = "exchanges-request",
    [0x020f] = "exchanges",
    [0x0210] = "set-acceptor",
    [0x0211] = "acceptor-set",
    [0x0212] = "withdraw",
    [0x0213] = "present",
    [0x0214] = "presentation",
    [0x0215] = "delegate",
    [0x0216] = "delegation",
    [0x0217] = "install-delegation",
    [0x0218] = "log-request",
    [0x0219] = "log",
}

local f = tenet.fields
f.src = ProtoField.string("tenet.src", "Source")
f.src_domain = ProtoField.bytes("tenet.src.domain", "Source domain")
f.src_port = ProtoField.uint32("tenet.src.port", "Source port")
f.dst = ProtoField.string("tenet.dst", "Destination")
f.dst_domain = ProtoField.bytes("tenet.dst.domain", "Destination domain")
f.dst_port = ProtoField.uint32("tenet.dst.port", "Destination port")
f.mtype = ProtoField.uint16("tenet.mtype", "Message type", base.HEX, mtype_names)
f.param_len = ProtoField.uint32("tenet.param.len", "Param length")
f.param = ProtoField.bytes("tenet.param", "Param")
f.tlv = ProtoField.bytes("tenet.tlv", "TLV")
f.tlv_tag = ProtoField.uint32("tenet.tlv.tag", "Tag", base.HEX)
f.tlv_len = ProtoField.uint32("tenet.tlv.len", "Length")
f.tlv_value = ProtoField.bytes("tenet.tlv.value", "Value")
f.tlv_name = ProtoField.string("tenet.tlv.name", "Field")

local e_short = ProtoExpert.new("tenet.short", "Shorter than an eTP header",
    expert.group.MALFORMED, expert.severity.ERROR)
local e_tlv = ProtoExpert.new("tenet.tlv.malformed", "Malformed BER-TLV",
    expert.group.MALFORMED, expert.severity.WARN)
tenet.experts = { e_short, e_tlv }

-- What the top-level tags of each voucher message are
-- (crates/tenet-voucher/src/msg.rs), and the tags of an amount.
local amount = { [0x80] = "issuer", [0x81] = "promise", [0x82] = "quantity" }
local offer = { [0x80] = "initiator", [0x81] = "responder", [0xa0] = "give",
    [0xa1] = "want", [0x82] = "n1" }
local agreement = { [0x80] = "offer digest", [0x81] = "exchange id h(n2)",
    [0x82] = "signature", [0x83] = "certificate" }
local names = {
    [0x0201] = { [0x80] = "responder", [0x81] = "peer wallet", [0xa0] = "give", [0xa1] = "want" },
    [0x0202] = offer,
    [0x0203] = offer,
    [0x0204] = agreement,
    [0x0205] = { [0x80] = "exchange id h(n2)", [0x81] = "signature", [0x82] = "certificate" },
    [0x0206] = { [0x80] = "n2" },
    [0x0207] = { [0x80] = "kind", [0xa2] = "offer", [0xa3] = "agreement",
        [0x81] = "signature", [0x82] = "certificate" },
    [0x0208] = { [0x80] = "kind", [0x81] = "exchange id h(n2)", [0x82] = "signature",
        [0x83] = "certificate" },
    [0x0209] = { [0x80] = "exchange id h(n2)" },
    [0x020a] = amount,
}
-- Inside a constructed field: what its own tags are.
local inner = { give = amount, want = amount, offer = offer, agreement = agreement }

local function entity(buf, tree, at, field_id, field_domain, field_port, label)
    local domain = buf(at, 12)
    local port = buf(at + 12, 4)
    local text = domain:bytes():tohex(true) .. ":" .. port:uint()
    local sub = tree:add(field_id, buf(at, 16), text)
    sub:add(field_domain, domain)
    sub:add(field_port, port)
    return text
end

-- Parses BER-TLV (tags of 1 to 3 bytes, lengths short or 81/82/83) from
-- buf(at, len) into tree; `known` names the tags at this level.
local function tlvs(buf, tree, at, len, known, depth)
    local stop = at + len
    while at < stop do
        local start = at
        local first = buf(at, 1):uint()
        local tag = first
        at = at + 1
        if bit.band(first, 0x1f) == 0x1f then
            for _ = 1, 2 do
                if at >= stop then tree:add_proto_expert_info(e_tlv, "truncated tag") return end
                local b = buf(at, 1):uint()
                tag = tag * 256 + b
                at = at + 1
                if bit.band(b, 0x80) == 0 then break end
            end
        end
        if at >= stop then tree:add_proto_expert_info(e_tlv, "truncated length") return end
        local l = buf(at, 1):uint()
        at = at + 1
        if l >= 0x80 then
            local n = l - 0x80
            if n < 1 or n > 3 or at + n > stop then
                tree:add_proto_expert_info(e_tlv, "bad length form")
                return
            end
            l = buf(at, n):uint()
            at = at + n
        end
        if at + l > stop then
            tree:add_proto_expert_info(e_tlv, "value beyond the param")
            return
        end
        local name = known and known[tag]
        local label = string.format("TLV %x%s (%d bytes)", tag, name and (": " .. name) or "", l)
        local sub = tree:add(f.tlv, buf(start, at + l - start)):set_text(label)
        sub:add(f.tlv_tag, buf(start, 1), tag)
        if name then sub:add(f.tlv_name, name) end
        sub:add(f.tlv_len, l)
        local constructed = bit.band(first, 0x20) ~= 0
        if constructed and depth < 4 and l > 0 then
            tlvs(buf, sub, at, l, name and inner[name], depth + 1)
        elseif l > 0 then
            sub:add(f.tlv_value, buf(at, l))
        end
        at = at + l
    end
end

function tenet.dissector(buf, pinfo, tree)
    pinfo.cols.protocol = "TENeT"
    local root = tree:add(tenet, buf())
    if buf:len() < 34 then
        root:add_proto_expert_info(e_short)
        return
    end
    local src = entity(buf, root, 0, f.src, f.src_domain, f.src_port)
    local dst = entity(buf, root, 16, f.dst, f.dst_domain, f.dst_port)
    local mtype = buf(32, 2):uint()
    root:add(f.mtype, buf(32, 2))
    local plen = buf:len() - 34
    root:add(f.param_len, plen)
    local name = mtype_names[mtype] or string.format("0x%04x", mtype)
    pinfo.cols.src = src
    pinfo.cols.dst = dst
    pinfo.cols.info = string.format("%s -> %s %s len=%d", src, dst, name, plen)
    if plen == 0 then return end
    local param = root:add(f.param, buf(34, plen))
    if mtype >= 0x0100 and mtype <= 0x02ff then
        tlvs(buf, param, 34, plen, names[mtype], 0)
    end
end

DissectorTable.get("wtap_encap"):add(wtap.USER0, tenet)
