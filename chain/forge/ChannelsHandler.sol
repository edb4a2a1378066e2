// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.24;

import {Registry} from "../contracts/Registry.sol";
import {Channels} from "../contracts/Channels.sol";
import {Fixture} from "./Fixture.sol";

/// @notice What forge's invariant fuzzer drives: three payers and two providers open, top up,
/// serve (the payer co-signs receipts), settle honest batches, attempt to dispute them,
/// finalize, thaw, withdraw deposits and credits, and let time pass, in random order; a
/// dishonest provider now and then settles a fraud (a wrong split, a receipt of another
/// model in a run, value moved between runs) that a watcher, or the provider's own second
/// address, disputes at once. Every action keeps ghost accounting of what the contracts must
/// hold and owe, and counts each outcome the rules forbid; ChannelsInvariantTest checks both
/// after every call.
///
/// Actions never revert on purpose: a call the rules refuse is made with a low-level call,
/// its outcome compared with what the rules say, and a mismatch counted. (forge discards a
/// reverted handler call silently, with fail_on_revert = false.)
contract ChannelsHandler is Fixture {
    uint64 public constant WINDOW = 100;
    uint64 public constant THAW = 2 * WINDOW;
    uint256 internal constant MAX_CHANNELS = 4;
    uint256 internal constant MAX_RECEIPTS = 48;
    address internal constant WATCHER_1 = address(0x5A1);
    address internal constant WATCHER_2 = address(0x5A2);

    uint256[3] internal payerPks = [uint256(0xA11CE), 0xB0B1, 0xCA201];
    uint256[2] internal providerPks = [uint256(0x9001), 0x9002];
    /// Each provider's second address, from which it disputes its own frauds.
    address[2] internal alts = [address(0xA171), address(0xA172)];
    address[2] internal providers;

    bytes32[] public ids;
    /// Everyone who can be credited: providers, owners, the pool, the treasury, disputers.
    address[] internal beneficiaries;
    /// The handler's clock: every action starts at it (see `clocked`).
    uint256 public clock = 1_000_000;

    // ------------------------------------------------------------ ghost state

    mapping(bytes32 => uint256) public depositIn; // sent in by open and topUp
    mapping(bytes32 => uint256) public refunded; // sent back by withdrawDeposit
    mapping(bytes32 => uint256) public settledValue; // the cumulatives finalized
    /// The pending settlement of each channel as the handler made it.
    mapping(bytes32 => bool) internal pendHonest;
    mapping(bytes32 => uint64) internal pendFrom;
    mapping(bytes32 => uint64) internal pendTo;
    mapping(bytes32 => Channels.Payout[]) internal pendPayouts;
    /// Whether the provider made its one settlement after the thaw's end.
    mapping(bytes32 => bool) internal finalUsed;

    /// Credited, by the handler's own reckoning: the registered split of every finalized
    /// receipt's value, and dispute rewards.
    mapping(address => uint256) public ghostCredit;
    mapping(address => uint256) public ghostWithdrawn;

    uint256 public channelsIn; // deposits, top-ups and slashed bonds received
    uint256 public channelsOut; // refunds, withdrawals and burned bond halves
    uint256 public bondsIn;
    uint256 public slashed;
    uint256 public rewards;
    uint256 public burned;
    uint256 public zeroBalanceAtStart;

    // Outcomes the rules forbid (each must stay zero).
    uint256 public honestDisputed; // a dispute of an honest settlement succeeded
    uint256 public badEvidence; // a dispute of an honest settlement reverted other than NotFraud
    uint256 public voidPaid; // a void moved the channel's settled state or credited anyone but the disputer
    uint256 public fraudUndisputable; // a dispute of a fraud failed
    uint256 public settledPastFinal; // settle succeeded after the provider's final settlement
    uint256 public unexpected; // an action that should have succeeded failed, or the reverse
    string public lastUnexpected;

    // Counts, to see that the run exercised every path.
    uint256 public honestDisputes;
    uint256 public frauds;
    /// Frauds proven, by dispute: split, attribution, run sum.
    uint256[3] public fraudsOfKind;
    uint256 public finalized;
    uint256 public withdrawnDeposits;
    uint256 public refusedAfterFinal;

    constructor() {
        zeroBalanceAtStart = address(0).balance;
        vm.warp(clock);
        _deploy(WINDOW, THAW);
        for (uint256 i = 0; i < providers.length; i++) {
            providers[i] = _registerNode(providerPks[i], BOND);
            bondsIn += BOND;
            beneficiaries.push(providers[i]);
            beneficiaries.push(alts[i]);
        }
        beneficiaries.push(OWNER_A);
        beneficiaries.push(OWNER_B);
        beneficiaries.push(DATA_POOL);
        beneficiaries.push(TREASURY);
        beneficiaries.push(WATCHER_1);
        beneficiaries.push(WATCHER_2);
        // Two channels with receipts to settle from the first call on, so that short
        // sequences reach the thaw, the final settlement and the refund.
        for (uint256 i = 0; i < 2; i++) {
            bytes32 id = _open(payerPks[i], providers[i], 1 ether);
            ids.push(id);
            depositIn[id] = 1 ether;
            channelsIn += 1 ether;
            for (uint32 j = 0; j < 4; j++) {
                _serve(id, j % 2 == 0 ? MODEL_A : MODEL_B, 1_000 + j, 200 + j);
            }
        }
    }

    modifier clocked() {
        vm.warp(clock);
        _;
    }

    // ------------------------------------------------------------ actions
    //
    // Each action takes a seed for the channel and acts on the first channel from there on
    // that it applies to, so that few calls are wasted on channels in the wrong state.

    function open(uint256 payerSeed, uint256 providerSeed, uint256 amount) external clocked {
        if (ids.length >= MAX_CHANNELS) return;
        uint256 deposit = bound(amount, 0.001 ether, 2 ether);
        bytes32 id = _open(payerPks[payerSeed % payerPks.length], providers[providerSeed % providers.length], deposit);
        ids.push(id);
        depositIn[id] = deposit;
        channelsIn += deposit;
    }

    function topUp(uint256 chSeed, uint256 amount) external clocked {
        (bool found, bytes32 id) = _find(chSeed, Want.Open);
        if (!found) return;
        uint256 value = bound(amount, 1, 0.5 ether);
        address funder = address(uint160(0xF00D + chSeed % 3)); // anyone may fund a channel
        vm.deal(funder, value);
        vm.prank(funder);
        channels.topUp{value: value}(id);
        depositIn[id] += value;
        channelsIn += value;
    }

    /// The payer co-signs up to 6 more receipts, never beyond its deposit, and only while
    /// the channel is not thawing (a provider serves no thawing channel).
    function serve(uint256 chSeed, uint256 n, uint256 tokens) external clocked {
        (bool found, bytes32 id) = _find(chSeed, Want.Serve);
        if (!found) return;
        uint128 deposit = channels.channel(id).deposit;
        n = bound(n, 1, 6);
        for (uint256 i = 0; i < n && served[id].length < MAX_RECEIPTS; i++) {
            uint256 seed = uint256(keccak256(abi.encode(tokens, i)));
            bytes32 model = seed & 1 == 0 ? MODEL_A : MODEL_B;
            uint32 input = uint32(bound(seed >> 8, 1, 4_000));
            uint32 output = uint32(bound(seed >> 40, 0, 1_000));
            if (_signed(id) + _valueOf(model, input, output) > deposit) return;
            _serve(id, model, input, output);
        }
    }

    /// The provider finalizes its settlement if its window is over, then settles an honest
    /// batch up to a random co-signed seq: after the thaw's end, only once.
    function settle(uint256 chSeed, uint256 upTo) external clocked {
        (bool found, bytes32 id) = _find(chSeed, Want.Settle);
        if (!found) return;
        if (channels.pending(id).deadline != 0) _finalize(id);
        Channels.Channel memory ch = channels.channel(id);
        uint64 to = uint64(bound(upTo, ch.settledSeq + 1, served[id].length));
        Settlement memory s = _settlement(id, to);
        bool afterThaw = ch.thawEnd != 0 && block.timestamp >= ch.thawEnd;
        (bool ok, bytes memory err) = _trySettle(id, s);
        if (afterThaw && finalUsed[id]) {
            if (ok) settledPastFinal++;
            else if (_selector(err) == Channels.ThawEnded.selector) refusedAfterFinal++;
            else _unexpected("settle after the final settlement: not ThawEnded");
            if (!ok) return;
        } else if (!ok) {
            return _unexpected("an honest settlement was refused");
        }
        if (afterThaw) finalUsed[id] = true;
        _recordPending(id, true, ch.settledSeq, to, s.payouts);
    }

    /// A watcher tries to prove an honest pending settlement fraudulent with every dispute,
    /// with evidence that is valid (it binds to the settlement): each must answer NotFraud.
    function disputeHonest(uint256 chSeed, uint256 pick) external clocked {
        (bool found, bytes32 id) = _find(chSeed, Want.DisputeHonest);
        if (!found) return;
        Channels.Receipt[] memory b = _batch(id, pendFrom[id], pendTo[id]);
        Tree memory t = _tree(b);
        Channels.Payout[] memory payouts = pendPayouts[id];
        for (uint256 kind = 0; kind < 7; kind++) {
            bytes memory call = _honestEvidence(id, b, t, payouts, kind, uint256(keccak256(abi.encode(pick, kind))));
            honestDisputes++;
            vm.prank(kind % 2 == 0 ? WATCHER_1 : WATCHER_2);
            (bool ok, bytes memory err) = address(channels).call(call);
            if (ok) return _noteHonestDisputed(id);
            if (_selector(err) != Channels.NotFraud.selector) badEvidence++;
        }
    }

    function finalize(uint256 chSeed) external clocked {
        (bool found, bytes32 id) = _find(chSeed, Want.Finalize);
        if (found) _finalize(id);
    }

    function thaw(uint256 chSeed) external clocked {
        (bool found, bytes32 id) = _find(chSeed, Want.Serve);
        if (!found) return;
        vm.prank(channels.channel(id).payer);
        channels.thaw(id);
    }

    /// The payer finalizes the pending settlement if its window is over (anyone may) and
    /// tries to withdraw: it must succeed exactly when the thaw is over and nothing is
    /// pending, and return the deposit less what was settled.
    function withdrawDeposit(uint256 chSeed) external clocked {
        (bool found, bytes32 id) = _find(chSeed, Want.Thawing);
        if (!found) return;
        Channels.Pending memory p = channels.pending(id);
        if (p.deadline != 0 && block.timestamp >= p.deadline) _finalize(id);
        Channels.Channel memory ch = channels.channel(id);
        bool allowed = block.timestamp >= ch.thawEnd && channels.pending(id).deadline == 0;
        (bool ok, uint256 refund,) = _tryWithdrawDeposit(id);
        if (ok != allowed) {
            return _unexpected(ok ? "withdrawDeposit before its time" : "withdrawDeposit refused in its time");
        }
        if (!ok) return;
        withdrawnDeposits++;
        refunded[id] = refund;
        channelsOut += refund;
        if (refund != depositIn[id] - settledValue[id]) _unexpected("refund is not the deposit less the settled");
    }

    function withdraw(uint256 whoSeed) external clocked {
        address who = beneficiaries[whoSeed % beneficiaries.length];
        uint256 before = who.balance;
        vm.prank(who);
        channels.withdraw();
        uint256 got = who.balance - before;
        ghostWithdrawn[who] += got;
        channelsOut += got;
    }

    function warp(uint256 secs) external {
        clock += bound(secs, 1, 3 * WINDOW);
        vm.warp(clock);
    }

    /// The dishonest provider: settles a fraud made of the payer's own honest vouchers and
    /// receipts (so no collusion is needed), and a disputer — a watcher, or the provider's
    /// second address — proves it at once. The bond is halved between disputer and burn.
    function settleFraud(uint256 chSeed, uint256 kind, uint256 who) external clocked {
        (bool found, bytes32 id) = _find(chSeed, Want.Fraud);
        if (!found) return;
        if (channels.pending(id).deadline != 0) _finalize(id);
        Channels.Channel memory ch = channels.channel(id);
        bool afterThaw = ch.thawEnd != 0 && block.timestamp >= ch.thawEnd;
        if (afterThaw && finalUsed[id]) return;
        uint64 to = uint64(served[id].length);
        if (to <= ch.settledSeq) return;
        Settlement memory s = _settlement(id, to);
        bytes memory proof = _corrupt(id, s, kind);
        (bool ok,) = _trySettle(id, s);
        if (!ok) return _unexpected("a fraud with valid sums was refused at settle");
        if (afterThaw) finalUsed[id] = true;
        frauds++;

        uint256 providerIndex = ch.provider == providers[0] ? 0 : 1;
        address disputer = who % 3 == 0 ? alts[providerIndex] : (who % 3 == 1 ? WATCHER_1 : WATCHER_2);
        uint256 bond = registry.bondOf(ch.provider);
        uint256[] memory creditsBefore = _credits();
        vm.prank(disputer);
        (bool proven,) = address(channels).call(proof);
        if (!proven) {
            fraudUndisputable++;
            // Kept as pending, but not as honest: nothing disputes or finalizes it as such.
            _recordPending(id, false, ch.settledSeq, to, s.payouts);
            return;
        }
        fraudsOfKind[_fraudKind(proof)]++;
        uint256 reward = bond * channels.DISPUTE_REWARD_BPS() / 10_000;
        _noteSlash(bond, reward, disputer);
        // A void pays nothing: the channel is as before, and only the disputer was credited.
        Channels.Channel memory after_ = channels.channel(id);
        if (after_.settled != ch.settled || after_.settledSeq != ch.settledSeq) voidPaid++;
        uint256[] memory creditsAfter = _credits();
        for (uint256 i = 0; i < beneficiaries.length; i++) {
            uint256 want = creditsBefore[i] + (beneficiaries[i] == disputer ? reward : 0);
            if (creditsAfter[i] != want) voidPaid++;
        }
        _rebond(ch.provider);
    }

    // ------------------------------------------------------------ action helpers

    enum Want {
        Open, // not closed
        Serve, // open and not thawing
        Thawing, // open and thawing
        Settle, // open, nothing pending in its window, a receipt not in the last settlement
        Fraud, // as Settle, and not past its final settlement
        DisputeHonest, // an honest settlement in its window
        Finalize // a settlement past its window
    }

    /// The first channel from `seed` on in the state `want`.
    function _find(uint256 seed, Want want) internal view returns (bool, bytes32) {
        uint256 n = ids.length;
        for (uint256 k = 0; k < n; k++) {
            bytes32 id = ids[(seed % n + k) % n];
            Channels.Channel memory ch = channels.channel(id);
            Channels.Pending memory p = channels.pending(id);
            bool inWindow = p.deadline != 0 && block.timestamp < p.deadline;
            bool due = p.deadline != 0 && block.timestamp >= p.deadline;
            bool ok;
            if (want == Want.Open) {
                ok = !ch.closed;
            } else if (want == Want.Serve) {
                ok = !ch.closed && ch.thawEnd == 0;
            } else if (want == Want.Thawing) {
                ok = !ch.closed && ch.thawEnd != 0;
            } else if (want == Want.Settle || want == Want.Fraud) {
                uint64 next = p.deadline != 0 ? pendTo[id] : ch.settledSeq;
                ok = !ch.closed && !inWindow && served[id].length > next;
                if (want == Want.Fraud) ok = ok && !(finalUsed[id] && block.timestamp >= ch.thawEnd);
            } else if (want == Want.DisputeHonest) {
                ok = inWindow && pendHonest[id];
            } else {
                ok = due;
            }
            if (ok) return (true, id);
        }
        return (false, bytes32(0));
    }

    /// Finalizes the channel's pending settlement, which must be past its window, and
    /// credits the ghost with each run's registered split, computed from the receipts.
    function _finalize(bytes32 id) internal {
        Channels.Pending memory p = channels.pending(id);
        (bool ok,) = _tryFinalize(id, pendPayouts[id]);
        if (!ok) return _unexpected("finalize after the window was refused");
        finalized++;
        Channels.Receipt[] memory b = _batch(id, pendFrom[id], pendTo[id]);
        address provider_ = channels.channel(id).provider;
        uint256 i;
        while (i < b.length) {
            uint256 j = i;
            uint256 value;
            while (j < b.length && b[j].model == b[i].model) value += b[j++].value;
            Channels.Payout memory split = _split(b[i].model, uint64(j - i), value);
            ghostCredit[provider_] += split.node;
            ghostCredit[b[i].model == MODEL_A ? OWNER_A : OWNER_B] += split.owner;
            if (split.data != 0) ghostCredit[DATA_POOL] += split.data;
            ghostCredit[TREASURY] += split.protocol;
            i = j;
        }
        settledValue[id] = p.cumulative;
        _clearPending(id);
    }

    /// An honest settlement was voided: counted, and the ghost follows the contracts so
    /// that the other invariants keep checking the rest.
    function _noteHonestDisputed(bytes32 id) internal {
        honestDisputed++;
        address provider_ = channels.channel(id).provider;
        // The whole bond was slashed (the provider is re-bonded after every slash).
        _noteSlash(BOND, BOND * channels.DISPUTE_REWARD_BPS() / 10_000, WATCHER_1);
        _clearPending(id);
        _rebond(provider_);
    }

    function _noteSlash(uint256 bond, uint256 reward, address disputer) internal {
        slashed += bond;
        rewards += reward;
        burned += bond - reward;
        channelsIn += bond;
        channelsOut += bond - reward;
        ghostCredit[disputer] += reward;
    }

    function _rebond(address node) internal {
        vm.deal(node, node.balance + BOND);
        vm.prank(node);
        registry.addBond{value: BOND}();
        bondsIn += BOND;
    }

    // ------------------------------------------------------------ checks (for the invariants)

    function channelCount() external view returns (uint256) {
        return ids.length;
    }

    function beneficiaryCount() external view returns (uint256) {
        return beneficiaries.length;
    }

    function beneficiary(uint256 i) external view returns (address) {
        return beneficiaries[i];
    }

    function providerCount() external view returns (uint256) {
        return providers.length;
    }

    function provider(uint256 i) external view returns (address) {
        return providers[i];
    }

    function signed(bytes32 id) external view returns (uint128) {
        return _signed(id);
    }

    function contracts() external view returns (Registry, Channels) {
        return (registry, channels);
    }

    // ------------------------------------------------------------ internals

    function _valueOf(bytes32 model, uint32 input, uint32 output) internal pure returns (uint128) {
        return uint128((uint256(input) * _terms(model).priceIn + uint256(output) * _terms(model).priceOut) / 1000);
    }

    function _recordPending(bytes32 id, bool honest, uint64 from, uint64 to, Channels.Payout[] memory payouts)
        internal
    {
        pendHonest[id] = honest;
        pendFrom[id] = from;
        pendTo[id] = to;
        delete pendPayouts[id];
        for (uint256 i = 0; i < payouts.length; i++) {
            pendPayouts[id].push(payouts[i]);
        }
    }

    function _clearPending(bytes32 id) internal {
        delete pendHonest[id];
        delete pendFrom[id];
        delete pendTo[id];
        delete pendPayouts[id];
    }

    function _credits() internal view returns (uint256[] memory c) {
        c = new uint256[](beneficiaries.length);
        for (uint256 i = 0; i < c.length; i++) {
            c[i] = channels.balanceOf(beneficiaries[i]);
        }
    }

    function _unexpected(string memory what) internal {
        unexpected++;
        lastUnexpected = what;
    }

    function _fraudKind(bytes memory dispute) internal pure returns (uint256) {
        bytes4 s = bytes4(dispute);
        if (s == Channels.disputeAttribution.selector) return 1;
        if (s == Channels.disputeRunSum.selector) return 2;
        return 0;
    }

    /// The leaf range [start, end) of run k.
    function _runRange(Channels.Payout[] memory payouts, uint256 k) internal pure returns (uint256 start, uint256 end) {
        for (uint256 i = 0; i < k; i++) {
            start += payouts[i].leaves;
        }
        end = start + payouts[k].leaves;
    }

    /// Valid evidence against an honest settlement (calldata for one of Channels' disputes).
    function _honestEvidence(
        bytes32 id,
        Channels.Receipt[] memory b,
        Tree memory t,
        Channels.Payout[] memory payouts,
        uint256 kind,
        uint256 pick
    ) internal view returns (bytes memory) {
        uint256 i = pick % b.length;
        uint256 k = (pick >> 16) % payouts.length;
        (uint256 start, uint256 end) = _runRange(payouts, k);
        if (kind == 0) return abi.encodeCall(Channels.disputeSeq, (id, b[i], b[i].value, _proof(t, 0, i)));
        if (kind == 1) return abi.encodeCall(Channels.disputeValue, (id, b[i], b[i].value, _proof(t, 0, i)));
        if (kind == 2) return abi.encodeCall(Channels.disputeSplit, (id, payouts, k));
        if (kind == 3) {
            uint256 j = start + (pick >> 32) % (end - start);
            return abi.encodeCall(Channels.disputeAttribution, (id, payouts, k, b[j], b[j].value, _proof(t, 0, j)));
        }
        if (kind == 4) {
            Channels.SumNode memory first = Channels.SumNode(channels.receiptDigest(b[start]), b[start].value);
            Channels.SumNode memory last = Channels.SumNode(channels.receiptDigest(b[end - 1]), b[end - 1].value);
            return abi.encodeCall(
                Channels.disputeRunSum, (id, payouts, k, first, _proof(t, 0, start), last, _proof(t, 0, end - 1))
            );
        }
        Channels.SumNode memory none;
        if (kind == 5 || t.hash.length == 1) {
            // A leaf, as a leaf.
            Channels.SumNode memory leaf = Channels.SumNode(channels.receiptDigest(b[i]), b[i].value);
            return abi.encodeCall(Channels.disputeSum, (id, true, leaf, none, b[i].value, _proof(t, 0, i)));
        }
        // An inner node, by its children: a node of a level above the leaves that is not a
        // promoted one (the root always qualifies).
        uint256 level = 1 + (pick >> 48) % (t.hash.length - 1);
        uint256 combined = t.hash[level - 1].length / 2; // nodes of this level made of two children
        uint256 n = (pick >> 64) % combined;
        Channels.SumNode memory a = Channels.SumNode(t.hash[level - 1][2 * n], t.sum[level - 1][2 * n]);
        Channels.SumNode memory c = Channels.SumNode(t.hash[level - 1][2 * n + 1], t.sum[level - 1][2 * n + 1]);
        return abi.encodeCall(Channels.disputeSum, (id, false, a, c, t.sum[level][n], _proof(t, level, n)));
    }

    /// Makes `s` a fraud of kind `kind` whose sums all hold (settle accepts it) and returns
    /// the dispute that proves it.
    function _corrupt(bytes32 id, Settlement memory s, uint256 kind) internal view returns (bytes memory) {
        Channels.Payout[] memory p = s.payouts;
        kind %= 3;
        if (kind == 1 && p.length >= 2) {
            // Attribution: runs 0 and 1 merged into one of run 0's model.
            Channels.Payout memory merged = _split(
                p[0].model,
                p[0].leaves + p[1].leaves,
                uint256(p[0].node) + p[0].owner + p[0].data + p[0].protocol + p[1].node + p[1].owner + p[1].data
                    + p[1].protocol
            );
            Channels.Payout[] memory q = new Channels.Payout[](p.length - 1);
            q[0] = merged;
            for (uint256 i = 2; i < p.length; i++) {
                q[i - 1] = p[i];
            }
            s.payouts = q;
            uint256 j = p[0].leaves; // the first receipt of the old run 1: another model
            return
                abi.encodeCall(
                    Channels.disputeAttribution, (id, q, 0, s.batch[j], s.batch[j].value, _proof(s.tree, 0, j))
                );
        }
        if (kind == 2 && p.length >= 2 && p[1].node != 0) {
            // Run sums: one wei of run 1's value claimed by run 0 (each split stays exact
            // for its claimed value).
            uint256 v0 = uint256(p[0].node) + p[0].owner + p[0].data + p[0].protocol;
            uint256 v1 = uint256(p[1].node) + p[1].owner + p[1].data + p[1].protocol;
            p[0] = _split(p[0].model, p[0].leaves, v0 + 1);
            p[1] = _split(p[1].model, p[1].leaves, v1 - 1);
            (uint256 start, uint256 end) = _runRange(p, 0);
            Channels.SumNode memory first =
                Channels.SumNode(channels.receiptDigest(s.batch[start]), s.batch[start].value);
            Channels.SumNode memory last =
                Channels.SumNode(channels.receiptDigest(s.batch[end - 1]), s.batch[end - 1].value);
            return abi.encodeCall(
                Channels.disputeRunSum, (id, p, 0, first, _proof(s.tree, 0, start), last, _proof(s.tree, 0, end - 1))
            );
        }
        // Split: one wei moved between the node's part and the owner's.
        if (p[0].owner != 0) {
            p[0].owner -= 1;
            p[0].node += 1;
        } else {
            p[0].node -= 1;
            p[0].owner += 1;
        }
        return abi.encodeCall(Channels.disputeSplit, (id, p, 0));
    }
}
