// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.24;

import {Registry, Terms} from "../contracts/Registry.sol";
import {Channels} from "../contracts/Channels.sol";
import {SumMerkle} from "../contracts/SumMerkle.sol";
import {Cheats} from "./Test.sol";

/// @notice A deployment (Registry, Channels, two models, bonded providers) and honest
/// batches built in Solidity: receipts at the registered prices, the Merkle-sum tree of
/// docs/protocol.md over them (SumMerkle's hashes), the proofs of its leaves, the payer's
/// voucher signed with its secp256k1 key (vm.sign), and the registered split of every run.
/// Shared by the attack tests and the invariant handlers.
///
/// The models' terms are registered once and never updated: `_terms` is what the registry
/// holds, so nothing here reads the registry's terms views.
abstract contract Fixture is Cheats {
    uint128 internal constant BOND = 1 ether;
    uint64 internal constant UNBOND = 1 days;
    bytes32 internal constant MODEL_A = keccak256("attrinet/forge/model-a");
    bytes32 internal constant MODEL_B = keccak256("attrinet/forge/model-b");
    address internal constant TREASURY = address(0x7EA5);
    address internal constant OWNER_A = address(0xA0A);
    address internal constant OWNER_B = address(0xB0B);
    address internal constant DATA_POOL = address(0xDA7A);

    Registry internal registry;
    Channels internal channels;

    /// The receipts co-signed on each channel: seq i at index i - 1.
    mapping(bytes32 => Channels.Receipt[]) internal served;
    /// The secp256k1 key of each channel's payer, which signs its vouchers.
    mapping(bytes32 => uint256) internal payerKeyOf;

    // ------------------------------------------------------------ deployment

    /// Model A has a data share (to DATA_POOL) and odd prices and basis points, so that
    /// every rounding rule is exercised; model B has none.
    function _terms(bytes32 model) internal pure returns (Terms memory t) {
        if (model == MODEL_A) {
            t = Terms({
                priceIn: 3e12 + 7, priceOut: 9e12 + 1, nodeBps: 6417, ownerBps: 2250, dataBps: 1000, protocolBps: 333
            });
        } else {
            t = Terms({
                priceIn: 1e12 + 3, priceOut: 5e12 + 9, nodeBps: 7000, ownerBps: 2000, dataBps: 0, protocolBps: 1000
            });
        }
    }

    function _deploy(uint64 window, uint64 thaw) internal {
        _deploy(new Registry(TREASURY, UNBOND), window, thaw);
    }

    /// Channels on `registry_`, which must be fresh (its Channels is bound once).
    function _deploy(Registry registry_, uint64 window, uint64 thaw) internal {
        _bind(registry_, new Channels(registry_, window, thaw, BOND));
    }

    function _bind(Registry registry_, Channels channels_) internal {
        registry = registry_;
        channels = channels_;
        registry.setChannels(address(channels));
        vm.prank(OWNER_A);
        registry.registerModel(MODEL_A, _terms(MODEL_A), bytes32(0), DATA_POOL);
        vm.prank(OWNER_B);
        registry.registerModel(MODEL_B, _terms(MODEL_B), bytes32(0), address(0));
    }

    /// Registers the address of `pk` as a node with `bond`; its ed25519 key is any nonzero
    /// value (the chain never checks ed25519).
    function _registerNode(uint256 pk, uint256 bond) internal returns (address node) {
        node = vm.addr(pk);
        vm.deal(node, node.balance + bond);
        vm.prank(node);
        registry.registerNode{value: bond}(_edKey(pk));
    }

    function _edKey(uint256 pk) internal pure returns (bytes32) {
        return keccak256(abi.encode("ed25519", pk));
    }

    /// Opens a channel from the address of `payerPk` to `provider` with `deposit`.
    function _open(uint256 payerPk, address provider, uint256 deposit) internal returns (bytes32 id) {
        address payer = vm.addr(payerPk);
        vm.deal(payer, payer.balance + deposit);
        vm.prank(payer);
        id = channels.open{value: deposit}(provider, _edKey(payerPk));
        payerKeyOf[id] = payerPk;
    }

    // ------------------------------------------------------------ receipts

    /// The payer co-signs the next receipt of channel `id`: `input` and `output` tokens of
    /// `model` at its registered prices, made now. Returns its value.
    function _serve(bytes32 id, bytes32 model, uint32 input, uint32 output) internal returns (uint128 value) {
        Channels.Channel memory ch = channels.channel(id);
        Channels.Receipt[] storage rs = served[id];
        Terms memory t = _terms(model);
        value = uint128((uint256(input) * t.priceIn + uint256(output) * t.priceOut) / 1000);
        uint128 before = rs.length == 0 ? 0 : rs[rs.length - 1].cumulative;
        uint64 seq = uint64(rs.length + 1);
        rs.push(
            Channels.Receipt({
                channel: id,
                seq: seq,
                payer: ch.payer,
                provider: ch.provider,
                payerKey: ch.payerKey,
                providerKey: registry.node(ch.provider).key,
                model: model,
                requestHash: keccak256(abi.encode("request", id, seq)),
                responseHash: keccak256(abi.encode("response", id, seq)),
                inputTokens: input,
                outputTokens: output,
                priceIn: t.priceIn,
                priceOut: t.priceOut,
                value: value,
                cumulative: before + value,
                attributionRoot: bytes32(0), // no weights: the run's data share is all the pool's
                timestamp: uint64(block.timestamp)
            })
        );
    }

    /// The co-signed cumulative of channel `id` (its newest receipt's).
    function _signed(bytes32 id) internal view returns (uint128) {
        Channels.Receipt[] storage rs = served[id];
        return rs.length == 0 ? 0 : rs[rs.length - 1].cumulative;
    }

    /// The receipts with seq in (from, to].
    function _batch(bytes32 id, uint64 from, uint64 to) internal view returns (Channels.Receipt[] memory b) {
        b = new Channels.Receipt[](to - from);
        for (uint256 i = 0; i < b.length; i++) {
            b[i] = served[id][from + i];
        }
    }

    // ------------------------------------------------------------ Merkle-sum trees

    /// Every level of the batch's tree, leaves first: hashes and sums (docs/protocol.md,
    /// "Merkle trees": a level's odd last node is promoted unchanged).
    struct Tree {
        bytes32[][] hash;
        uint128[][] sum;
    }

    function _tree(Channels.Receipt[] memory b) internal view returns (Tree memory t) {
        bytes32[] memory digests = new bytes32[](b.length);
        uint128[] memory values = new uint128[](b.length);
        for (uint256 i = 0; i < b.length; i++) {
            digests[i] = channels.receiptDigest(b[i]);
            values[i] = b[i].value;
        }
        return _treeOf(digests, values);
    }

    /// The tree over leaves (digest, value); values may be anything (a dishonest batch).
    function _treeOf(bytes32[] memory digests, uint128[] memory values) internal pure returns (Tree memory t) {
        uint256 n = digests.length;
        uint256 levels = 1;
        for (uint256 c = n; c > 1; c = (c + 1) >> 1) {
            levels++;
        }
        t.hash = new bytes32[][](levels);
        t.sum = new uint128[][](levels);
        t.hash[0] = new bytes32[](n);
        t.sum[0] = new uint128[](n);
        for (uint256 i = 0; i < n; i++) {
            t.hash[0][i] = SumMerkle.leafHash(digests[i], values[i]);
            t.sum[0][i] = values[i];
        }
        for (uint256 l = 1; l < levels; l++) {
            uint256 below = t.hash[l - 1].length;
            uint256 count = (below + 1) >> 1;
            t.hash[l] = new bytes32[](count);
            t.sum[l] = new uint128[](count);
            for (uint256 i = 0; i < count; i++) {
                if (2 * i + 1 < below) {
                    (bytes32 lh, uint128 ls) = (t.hash[l - 1][2 * i], t.sum[l - 1][2 * i]);
                    (bytes32 rh, uint128 rs) = (t.hash[l - 1][2 * i + 1], t.sum[l - 1][2 * i + 1]);
                    t.hash[l][i] = SumMerkle.nodeHash(lh, ls, rh, rs);
                    t.sum[l][i] = ls + rs;
                } else {
                    t.hash[l][i] = t.hash[l - 1][2 * i];
                    t.sum[l][i] = t.sum[l - 1][2 * i];
                }
            }
        }
    }

    function _root(Tree memory t) internal pure returns (bytes32) {
        return t.hash[t.hash.length - 1][0];
    }

    /// The path of node `index` of level `level` to the root.
    function _proof(Tree memory t, uint256 level, uint256 index) internal pure returns (Channels.Proof memory p) {
        p.index = uint64(index);
        p.count = uint64(t.hash[level].length);
        Channels.SumNode[] memory sibs = new Channels.SumNode[](t.hash.length - 1 - level);
        uint256 k;
        for (uint256 l = level; l + 1 < t.hash.length; l++) {
            uint256 count = t.hash[l].length;
            if (index & 1 == 1 || index != count - 1) {
                uint256 s = index ^ 1;
                sibs[k++] = Channels.SumNode({hash: t.hash[l][s], sum: t.sum[l][s]});
            }
            index >>= 1;
        }
        assembly {
            mstore(sibs, k)
        }
        p.siblings = sibs;
    }

    // ------------------------------------------------------------ vouchers and payouts

    function _voucherFor(bytes32 id, uint64 seq, uint128 cumulative, bytes32 root)
        internal
        view
        returns (Channels.Voucher memory v, bytes memory sig)
    {
        v = Channels.Voucher({channel: id, seq: seq, cumulative: cumulative, receiptsRoot: root});
        (uint8 sv, bytes32 r, bytes32 s) = vm.sign(payerKeyOf[id], channels.voucherDigest(v));
        sig = abi.encodePacked(r, s, sv);
    }

    /// THE one place a Payout is built, so that a new field is a one-line change here. No
    /// data entries: a run's whole data share goes to the model's pool.
    function _payout(bytes32 model, uint64 leaves, uint128 node, uint128 owner, uint128 data, uint128 protocol)
        internal
        pure
        returns (Channels.Payout memory po)
    {
        po.model = model;
        po.leaves = leaves;
        po.node = node;
        po.owner = owner;
        po.data = data;
        po.protocol = protocol;
        po.termsVersion = 0; // the terms registered with the model; the tests never update them
    }

    /// floor(V x b / 10000), as docs/protocol.md ("Payout split") and Channels compute it.
    function _share(uint256 value, uint256 bps) internal pure returns (uint128) {
        return uint128((value / 10_000) * bps + ((value % 10_000) * bps) / 10_000);
    }

    /// The registered split of `value` of `model`'s run of `leaves` receipts.
    function _split(bytes32 model, uint64 leaves, uint256 value) internal pure returns (Channels.Payout memory) {
        Terms memory t = _terms(model);
        uint128 owner = _share(value, t.ownerBps);
        uint128 data = _share(value, t.dataBps);
        uint128 protocol = _share(value, t.protocolBps);
        return _payout(model, leaves, uint128(value) - owner - data - protocol, owner, data, protocol);
    }

    /// The honest payouts of a batch: one run per stretch of consecutive receipts of a model.
    function _payoutsOf(Channels.Receipt[] memory b) internal pure returns (Channels.Payout[] memory p) {
        p = new Channels.Payout[](b.length);
        uint256 runs;
        uint256 i;
        while (i < b.length) {
            uint256 j = i;
            uint256 value;
            while (j < b.length && b[j].model == b[i].model) value += b[j++].value;
            p[runs++] = _split(b[i].model, uint64(j - i), value);
            i = j;
        }
        assembly {
            mstore(p, runs)
        }
    }

    /// An honest settlement of channel `id` up to `seq`: its batch, tree, voucher and payouts.
    struct Settlement {
        Channels.Receipt[] batch;
        Tree tree;
        Channels.Voucher voucher;
        bytes sig;
        Channels.Payout[] payouts;
    }

    function _settlement(bytes32 id, uint64 seq) internal view returns (Settlement memory s) {
        uint64 start = channels.channel(id).settledSeq;
        s.batch = _batch(id, start, seq);
        s.tree = _tree(s.batch);
        (s.voucher, s.sig) = _voucherFor(id, seq, served[id][seq - 1].cumulative, _root(s.tree));
        s.payouts = _payoutsOf(s.batch);
    }

    /// The provider of `id` settles `s`; returns whether it was accepted and the revert data.
    function _trySettle(bytes32 id, Settlement memory s) internal returns (bool ok, bytes memory err) {
        vm.prank(channels.channel(id).provider);
        (ok, err) = address(channels).call(abi.encodeCall(Channels.settle, (s.voucher, s.sig, s.payouts)));
    }

    /// Anyone finalizes the pending settlement of `id` with its payouts.
    function _tryFinalize(bytes32 id, Channels.Payout[] memory payouts) internal returns (bool ok, bytes memory err) {
        (ok, err) = address(channels).call(abi.encodeCall(Channels.finalize, (id, payouts)));
    }

    /// The payer of `id` withdraws its deposit; returns whether it could and what it got.
    function _tryWithdrawDeposit(bytes32 id) internal returns (bool ok, uint256 refund, bytes memory err) {
        address payer = channels.channel(id).payer;
        uint256 before = payer.balance;
        vm.prank(payer);
        (ok, err) = address(channels).call(abi.encodeCall(Channels.withdrawDeposit, (id)));
        refund = payer.balance - before;
    }

    function _selector(bytes memory err) internal pure returns (bytes4 s) {
        if (err.length >= 4) s = bytes4(err);
    }
}
