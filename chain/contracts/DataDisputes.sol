// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.24;

import {Channels} from "./Channels.sol";
import {Registry} from "./Registry.sol";
import {SumMerkle} from "./SumMerkle.sol";

/// @title attrinet data-reward disputes.
/// @notice The fraud proofs about a settlement's data entries and its receipts' attribution
/// weights (docs/protocol.md, "Attribution"). Channels deploys this contract in its
/// constructor and lets it alone void a pending settlement (`Channels.voidForFraud`); it
/// reads the settlement through Channels' views. It is separate only because Channels and
/// these disputes together exceed the EVM's 24,576-byte code size limit.
///
/// As in Channels, a dispute reverts with NotFraud when its evidence is valid but honest,
/// and with BadProof or WrongPosition when the evidence does not bind to the settlement.
contract DataDisputes {
    /// Attribution weights are parts per million.
    uint256 internal constant PPM = 1_000_000;
    /// After a model's datanet changes, receipts are judged by the new one only from this
    /// long on: nodes serving the model learn of the change (they re-read it every
    /// settlement pass) and restart with the new index, and a receipt's timestamp may be
    /// a few minutes off (docs/protocol.md, "Ledger rules").
    uint64 public constant DATANET_GRACE = 1 hours;

    /// @notice The Channels contract whose settlements this disputes.
    Channels public immutable channels;

    /// The channel has no settlement in its challenge window.
    error NothingPending(bytes32 channel);
    /// Payouts that are not the ones the settlement committed to.
    error PayoutsMismatch();
    /// A proof that is malformed or does not lead to the committed root.
    error BadProof();
    /// A proof whose leaf count or index is not the one this dispute requires.
    error WrongPosition(uint256 index, uint256 count);
    /// The evidence is valid but shows no fraud.
    error NotFraud();
    /// The receipt predates the model's current datanet, so that datanet cannot judge it.
    error DatanetChanged(uint64 receiptTime, uint64 datanetSince);

    /// A neighbour of an address in a datanet's ascending owners tree.
    struct Neighbour {
        bool present;
        address owner;
        Channels.PlainProof proof;
    }

    /// What a proof needs of a datanet's commitment (docs/protocol.md, "Datanet").
    struct DatanetParts {
        uint32 minSpan;
        bytes32 contributionsRoot;
        bytes32 ownersRoot;
        uint32 ownerCount;
    }

    constructor(Channels channels_) {
        channels = channels_;
    }

    // ------------------------------------------------------------ disputes
    //
    // A run's data entries are fixed by the receipts and the declared payouts: receipt i of
    // run k has the data share floor(value_i x data_k / value_k); weight j of its weights
    // (contributor c, ppm) is owed floor(share x ppm / 10^6); every non-zero amount is one
    // entry (c, i, j), and the entries are sorted by (c, i). Positions in a data tree are
    // checked against the declared entry count, and disputeDataNode makes the tree's shape
    // answer to that count, so no position is ambiguous.

    /// @notice A data entry of run `k` that is not owed: its receipt is outside the run or
    /// has no weights, its weight index is past the receipt's weights, the weight there is
    /// another contributor's, or its amount is not that weight's part of the receipt's share.
    function disputeDataEntry(
        bytes32 id,
        Channels.Payout[] calldata payouts,
        uint256 k,
        Channels.DataEntry calldata e,
        Channels.Proof calldata eProof,
        Channels.Receipt calldata r,
        uint128 leafValue,
        Channels.Proof calldata rProof,
        Channels.Weight calldata w,
        Channels.PlainProof calldata wProof
    ) external {
        (Channels.Pending memory p, uint64 settledSeq) = _pending(id);
        (uint256 start, uint256 end) = _run(p, payouts, k);
        Channels.Payout calldata po = payouts[k];
        if (eProof.count != po.dataEntries) revert WrongPosition(eProof.index, eProof.count);
        _verifyData(po.dataRoot, e, eProof);
        bool fraud;
        if (e.leaf < start || e.leaf >= end) {
            fraud = true;
        } else {
            if (rProof.count != p.seq - settledSeq || rProof.index != e.leaf) {
                revert WrongPosition(rProof.index, rProof.count);
            }
            _verifyLeaf(p, channels.receiptDigest(r), leafValue, rProof);
            if (r.attributionRoot == bytes32(0)) {
                fraud = true;
            } else {
                _verifyWeight(r.attributionRoot, w, wProof);
                if (e.weightIndex >= w.count) {
                    fraud = true;
                } else {
                    if (wProof.index != e.weightIndex) revert WrongPosition(wProof.index, wProof.count);
                    fraud = w.contributor != e.contributor || e.amount == 0
                        || e.amount != _ppmOf(_receiptData(po, r.value), w.ppm);
                }
            }
        }
        _conclude(id, fraud, Channels.Fraud.DataEntry);
    }

    /// @notice Two neighbouring entries of run `k`'s data tree not in strictly ascending
    /// (contributor, leaf) order: a contributor's entries would not be one range, or an
    /// entry would be counted twice.
    function disputeDataOrder(
        bytes32 id,
        Channels.Payout[] calldata payouts,
        uint256 k,
        Channels.DataEntry calldata a,
        Channels.Proof calldata aProof,
        Channels.DataEntry calldata b,
        Channels.Proof calldata bProof
    ) external {
        (Channels.Pending memory p,) = _pending(id);
        _run(p, payouts, k);
        Channels.Payout calldata po = payouts[k];
        if (aProof.count != po.dataEntries || bProof.count != po.dataEntries || bProof.index != aProof.index + 1) {
            revert WrongPosition(bProof.index, bProof.count);
        }
        _verifyData(po.dataRoot, a, aProof);
        _verifyData(po.dataRoot, b, bProof);
        _conclude(id, !_less(a.contributor, a.leaf, b.contributor, b.leaf), Channels.Fraud.DataOrder);
    }

    /// @notice A weight of a receipt of run `k` that is owed a non-zero amount but has no
    /// entry: the entries at positions `gap - 1` and `gap` (where they exist) sort before
    /// and after the missing (contributor, leaf).
    function disputeDataMissing(
        bytes32 id,
        Channels.Payout[] calldata payouts,
        uint256 k,
        Channels.Receipt calldata r,
        uint128 leafValue,
        Channels.Proof calldata rProof,
        Channels.Weight calldata w,
        Channels.PlainProof calldata wProof,
        uint64 gap,
        Channels.DataEntry calldata below,
        Channels.Proof calldata belowProof,
        Channels.DataEntry calldata above,
        Channels.Proof calldata aboveProof
    ) external {
        (Channels.Pending memory p, uint64 settledSeq) = _pending(id);
        (uint256 start, uint256 end) = _run(p, payouts, k);
        Channels.Payout calldata po = payouts[k];
        if (rProof.count != p.seq - settledSeq || rProof.index < start || rProof.index >= end) {
            revert WrongPosition(rProof.index, rProof.count);
        }
        _verifyLeaf(p, channels.receiptDigest(r), leafValue, rProof);
        _verifyWeight(r.attributionRoot, w, wProof);
        uint256 count = po.dataEntries;
        if (gap > count) revert WrongPosition(gap, count);
        bool fraud = _ppmOf(_receiptData(po, r.value), w.ppm) != 0;
        if (gap > 0) {
            if (belowProof.count != count || belowProof.index != gap - 1) {
                revert WrongPosition(belowProof.index, belowProof.count);
            }
            _verifyData(po.dataRoot, below, belowProof);
            fraud = fraud && _less(below.contributor, below.leaf, w.contributor, rProof.index);
        }
        if (gap < count) {
            if (aboveProof.count != count || aboveProof.index != gap) {
                revert WrongPosition(aboveProof.index, aboveProof.count);
            }
            _verifyData(po.dataRoot, above, aboveProof);
            fraud = fraud && _less(w.contributor, rProof.index, above.contributor, above.leaf);
        }
        _conclude(id, fraud, Channels.Fraud.DataMissing);
    }

    /// @notice A node of run `k`'s data tree, at `level` (0 = entries) and `proof.index`
    /// of the shape `dataEntries` declares, that is wrong: its recorded sum is not its
    /// children's (or overflows), the tree's total is not `distributed`, or it is an inner
    /// node where the shape has an entry or an entry where the shape has an inner node (a
    /// tree of another size, whose extra or missing entries no proof could reach). Given
    /// as in disputeSum.
    function disputeDataNode(
        bytes32 id,
        Channels.Payout[] calldata payouts,
        uint256 k,
        uint256 level,
        bool isLeaf,
        Channels.SumNode calldata a,
        Channels.SumNode calldata b,
        uint128 recordedSum,
        Channels.Proof calldata proof
    ) external {
        (Channels.Pending memory p,) = _pending(id);
        _run(p, payouts, k);
        Channels.Payout calldata po = payouts[k];
        uint256 size = po.dataEntries;
        uint256 under;
        for (uint256 l = 0; l < level && size > 1; l++) {
            under = size;
            size = (size + 1) >> 1;
        }
        // Past the root, or a node the declared shape promotes (it has no hash of its own).
        bool inner = level > 0;
        if (size == 0 || proof.count != size || proof.index >= size || (inner && 2 * uint256(proof.index) + 1 >= under)) {
            revert WrongPosition(proof.index, proof.count);
        }
        bytes32 h;
        uint256 actual;
        if (isLeaf) {
            h = SumMerkle.leafHash(a.hash, a.sum);
            actual = a.sum;
        } else {
            h = SumMerkle.nodeHash(a.hash, a.sum, b.hash, b.sum);
            actual = uint256(a.sum) + b.sum;
        }
        uint256 recorded = size == 1 ? actual : recordedSum;
        (bytes32 root, uint256 total,, bool overflow) = SumMerkle.walk(h, recorded, proof.index, size, proof.siblings);
        if (root != po.dataRoot) revert BadProof();
        bool fraud = isLeaf == inner || overflow || actual > type(uint128).max || actual != recorded
            || total != po.distributed;
        _conclude(id, fraud, Channels.Fraud.DataNode);
    }

    /// @notice A receipt of the batch whose weights (given in full, each leaf as its tree
    /// holds it) break the rules: a leaf naming another count, a zero weight, contributors
    /// not strictly ascending, or a sum other than 1,000,000 ppm.
    function disputeWeights(bytes32 id, Channels.Receipt calldata r, uint128 leafValue, Channels.Proof calldata rProof, Channels.Weight[] calldata ws)
        external
    {
        (Channels.Pending memory p,) = _pending(id);
        _verifyLeaf(p, channels.receiptDigest(r), leafValue, rProof);
        if (ws.length == 0 || _weightsRoot(ws) != r.attributionRoot) revert BadProof();
        uint256 sum;
        bool fraud;
        for (uint256 i = 0; i < ws.length; i++) {
            Channels.Weight calldata w = ws[i];
            sum += w.ppm;
            if (w.count != ws.length || w.ppm == 0 || (i > 0 && ws[i - 1].contributor >= w.contributor)) fraud = true;
        }
        _conclude(id, fraud || sum != PPM, Channels.Fraud.Weights);
    }

    /// @notice A receipt of the batch whose weights pay `w.contributor`, which owns no
    /// contribution of the model's datanet: its neighbours `lo` < contributor < `hi` in the
    /// datanet's ascending owners tree are adjacent (or one is absent at an end). A model
    /// registered without a datanet pays no weights at all, so any weight of its receipts
    /// is such a fraud. Only receipts made DATANET_GRACE after the datanet was last set are
    /// judged.
    function disputeOutsider(
        bytes32 id,
        Channels.Receipt calldata r,
        uint128 leafValue,
        Channels.Proof calldata rProof,
        Channels.Weight calldata w,
        Channels.PlainProof calldata wProof,
        DatanetParts calldata d,
        Neighbour calldata lo,
        Neighbour calldata hi
    ) external {
        (Channels.Pending memory p,) = _pending(id);
        _verifyLeaf(p, channels.receiptDigest(r), leafValue, rProof);
        _verifyWeight(r.attributionRoot, w, wProof);
        Registry.Model memory m = channels.registry().model(r.model);
        if (r.timestamp < m.datanetSince + DATANET_GRACE) revert DatanetChanged(r.timestamp, m.datanetSince);
        if (m.datanetRoot != bytes32(0)) {
            bytes32 committed =
                keccak256(abi.encodePacked("attrinet/datanet/v2", d.minSpan, d.contributionsRoot, d.ownersRoot));
            if (committed != m.datanetRoot) revert BadProof();
            address c = w.contributor;
            if (lo.present) {
                _verifyOwner(d, lo);
                if (lo.owner >= c) revert NotFraud();
            }
            if (hi.present) {
                _verifyOwner(d, hi);
                if (hi.owner <= c) revert NotFraud();
            }
            // Adjacent neighbours, or the first / last owner alone: nothing lies between.
            bool adjacent = lo.present && hi.present
                ? hi.proof.index == lo.proof.index + 1
                : lo.present ? lo.proof.index + 1 == d.ownerCount : hi.present && hi.proof.index == 0;
            if (!adjacent) revert WrongPosition(hi.present ? hi.proof.index : lo.proof.index, d.ownerCount);
        }
        _conclude(id, true, Channels.Fraud.Outsider);
    }

    /// Checks that `n.owner` is a leaf of the datanet's owners tree at its proof's position.
    function _verifyOwner(DatanetParts calldata d, Neighbour calldata n) internal pure {
        if (n.proof.count != d.ownerCount) revert BadProof();
        _verifyPlain(d.ownersRoot, keccak256(abi.encodePacked(n.owner, d.ownerCount)), n.proof);
    }

    function _weightDigest(Channels.Weight calldata w) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(w.contributor, w.ppm, w.count));
    }

    /// Checks that `w` is a leaf of the weights tree `root` at the proof's position, the
    /// proof's count being the one the leaf names.
    function _verifyWeight(bytes32 root, Channels.Weight calldata w, Channels.PlainProof calldata proof) internal pure {
        if (proof.count != w.count) revert BadProof();
        _verifyPlain(root, _weightDigest(w), proof);
    }

    /// Checks that `digest` is the leaf at the proof's position of the plain Merkle tree
    /// `root` of `proof.count` leaves.
    function _verifyPlain(bytes32 root, bytes32 digest, Channels.PlainProof calldata proof) internal pure {
        uint256 index = proof.index;
        uint256 count = proof.count;
        if (index >= count) revert BadProof();
        bytes32 h = keccak256(abi.encodePacked(bytes1(0x00), digest));
        uint256 k;
        while (count > 1) {
            if (index & 1 == 1 || index != count - 1) {
                if (k >= proof.siblings.length) revert BadProof();
                bytes32 s = proof.siblings[k++];
                h = index & 1 == 0
                    ? keccak256(abi.encodePacked(bytes1(0x01), h, s))
                    : keccak256(abi.encodePacked(bytes1(0x01), s, h));
            }
            index >>= 1;
            count = (count + 1) >> 1;
        }
        if (k != proof.siblings.length || h != root) revert BadProof();
    }

    /// The plain Merkle root of a full list of weight leaves.
    function _weightsRoot(Channels.Weight[] calldata ws) internal pure returns (bytes32) {
        uint256 n = ws.length;
        if (n == 0) return bytes32(0);
        bytes32[] memory level = new bytes32[](n);
        for (uint256 i = 0; i < n; i++) {
            level[i] = keccak256(abi.encodePacked(bytes1(0x00), _weightDigest(ws[i])));
        }
        while (n > 1) {
            uint256 m = (n + 1) >> 1;
            for (uint256 i = 0; i < n / 2; i++) {
                level[i] = keccak256(abi.encodePacked(bytes1(0x01), level[2 * i], level[2 * i + 1]));
            }
            if (n & 1 == 1) level[m - 1] = level[n - 1];
            n = m;
        }
        return level[0];
    }

    /// (ca, la) < (cb, lb), contributor first.
    function _less(address ca, uint256 la, address cb, uint256 lb) internal pure returns (bool) {
        return ca < cb || (ca == cb && la < lb);
    }

    /// A receipt's part of its run's data share: floor(value x data / runValue).
    function _receiptData(Channels.Payout calldata po, uint256 value) internal pure returns (uint256) {
        uint256 runValue = uint256(po.node) + po.owner + po.data + po.protocol;
        if (runValue == 0) return 0;
        return value * po.data / runValue;
    }

    /// floor(amount x ppm / 10^6), exactly and without overflow.
    function _ppmOf(uint256 amount, uint256 ppm) internal pure returns (uint256) {
        return (amount / PPM) * ppm + ((amount % PPM) * ppm) / PPM;
    }

    // ------------------------------------------------------------ the settlement

    /// The pending settlement of `id` (reverting when there is none in its window) and the
    /// channel's settled seq (its batch start).
    function _pending(bytes32 id) internal view returns (Channels.Pending memory p, uint64 settledSeq) {
        p = channels.pending(id);
        // A dispute after the window would race finalize; the window is the deal.
        if (p.deadline == 0 || block.timestamp >= p.deadline) revert NothingPending(id);
        settledSeq = channels.channel(id).settledSeq;
    }

    /// The leaf range [start, end) of payout run k, once the payouts are the settlement's.
    function _run(Channels.Pending memory p, Channels.Payout[] calldata payouts, uint256 k)
        internal
        pure
        returns (uint256 start, uint256 end)
    {
        if (keccak256(abi.encode(payouts)) != p.payoutsHash) revert PayoutsMismatch();
        for (uint256 i = 0; i < k; i++) {
            start += payouts[i].leaves;
        }
        end = start + payouts[k].leaves;
    }

    function _conclude(bytes32 id, bool fraud, Channels.Fraud kind) internal {
        if (!fraud) revert NotFraud();
        channels.voidForFraud(id, msg.sender, kind);
    }

    // ------------------------------------------------------------ Merkle-sum trees
    //
    // Paths are walked by SumMerkle (docs/protocol.md, "Merkle trees" and "Proofs").

    /// Checks that a receipt leaf is in the settlement's receipts tree at the proof's position.
    function _verifyLeaf(Channels.Pending memory p, bytes32 digest, uint128 value, Channels.Proof calldata proof)
        internal
        pure
    {
        (bytes32 root,,,) = SumMerkle.walk(SumMerkle.leafHash(digest, value), value, proof.index, proof.count, proof.siblings);
        if (root != p.receiptsRoot) revert BadProof();
    }

    /// Checks that data entry `e` is in the data tree `root` at the proof's position.
    function _verifyData(bytes32 root, Channels.DataEntry calldata e, Channels.Proof calldata proof) internal pure {
        bytes32 digest = keccak256(abi.encodePacked(e.contributor, e.leaf, e.weightIndex));
        (bytes32 computed,,,) =
            SumMerkle.walk(SumMerkle.leafHash(digest, e.amount), e.amount, proof.index, proof.count, proof.siblings);
        if (computed != root) revert BadProof();
    }
}
