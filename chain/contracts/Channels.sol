// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.24;

import {Registry, Terms} from "./Registry.sol";
import {DataDisputes} from "./DataDisputes.sol";
import {SumMerkle} from "./SumMerkle.sol";

/// @title attrinet payment channels: deposits, optimistic settlement, fraud proofs.
/// @notice A payer opens a channel to a provider (a registered node) with a deposit. The
/// provider settles the payer's latest voucher: one transaction whose gas does not depend
/// on how many receipts the voucher covers, because the contract checks only the payer's
/// signature and stores commitments (the receipts root and a hash of the payouts). The
/// settlement becomes final after a challenge window; within it anyone holding the batch
/// can prove one of the frauds below, which voids the settlement and slashes the
/// provider's bond: half to the disputer, the rest burned (DISPUTE_REWARD_BPS).
/// Beneficiaries are credited at finalize and pull with `withdraw`.
///
/// Receipts, vouchers and the Merkle-sum tree are specified in docs/protocol.md; the
/// digests here are byte-for-byte those of attrinet-market (tested from Rust).
///
/// Payouts. A batch is cut into runs of consecutive receipts of one model made under one
/// version of its terms; each `Payout` names the model, the terms version, the number of
/// receipts (`leaves`) in its run and the run's value split into node / owner / data /
/// protocol parts, which must be that version's split of the run's value. Every receipt of
/// the run must carry that version's prices and a timestamp the version covers
/// (Registry.termsVersion), so an owner's later updates change nothing already served. Sums over runs are checked at settle; everything that needs the
/// receipts is left to disputes.
///
/// Data rewards (docs/protocol.md, "Attribution"). Each receipt commits to its attribution
/// weights; a run's data share is divided between the receipts by value and each receipt's
/// part by its weights. The provider declares, per run, the root of a Merkle-sum tree of
/// the resulting entries sorted by (contributor, leaf), their number, and their total
/// (`distributed`); at finalize the run's model's data pool is credited the rest of the
/// data share, and each contributor later claims its entries as one range of the tree
/// (`claimData`). Settle stays one check per run; the entries are checked by watchers and
/// reach the chain only in disputes, which live in `DataDisputes` (deployed by this
/// contract's constructor: together they would pass the 24,576-byte code size limit).
contract Channels {
    // ------------------------------------------------------------ types

    struct Receipt {
        bytes32 channel;
        uint64 seq;
        address payer;
        address provider;
        bytes32 payerKey;
        bytes32 providerKey;
        bytes32 model;
        bytes32 requestHash;
        bytes32 responseHash;
        uint32 inputTokens;
        uint32 outputTokens;
        uint128 priceIn;
        uint128 priceOut;
        uint128 value;
        uint128 cumulative;
        bytes32 attributionRoot;
        uint64 timestamp;
    }

    struct Voucher {
        bytes32 channel;
        uint64 seq;
        uint128 cumulative;
        bytes32 receiptsRoot;
    }

    struct Payout {
        bytes32 model;
        uint64 leaves;
        uint128 node;
        uint128 owner;
        uint128 data;
        uint128 protocol;
        bytes32 dataRoot; // Merkle-sum root of the run's data entries; zero when there are none
        uint64 dataEntries; // how many entries the tree holds (fixes its shape)
        uint128 distributed; // their total, paid to contributors by claims; the rest of `data` goes to the pool
        uint32 termsVersion; // the version of the model's terms the run's receipts were made under
    }

    /// One contributor's part of one receipt's data share: a leaf of a run's data tree,
    /// hashed as keccak256(contributor, leaf, weightIndex) with `amount` as its value.
    struct DataEntry {
        address contributor;
        uint64 leaf; // the receipt's leaf index in the batch
        uint32 weightIndex; // the contributor's position in the receipt's weights
        uint128 amount;
    }

    /// A leaf of a receipt's weights tree (its attributionRoot): keccak256(contributor,
    /// ppm, count). Each leaf names the tree's size, which binds proofs to positions.
    struct Weight {
        address contributor;
        uint32 ppm;
        uint32 count;
    }

    /// A path in a plain Merkle tree (docs/protocol.md, "Proofs").
    struct PlainProof {
        uint64 index;
        uint64 count;
        bytes32[] siblings;
    }

    /// A Merkle-sum tree node: its hash and the sum of the values below it.
    struct SumNode {
        bytes32 hash;
        uint128 sum;
    }

    /// A path from a node to the root: the node's index in its level, the level's size and
    /// the siblings consumed on the way up (docs/protocol.md, "Proofs").
    struct Proof {
        uint64 index;
        uint64 count;
        SumNode[] siblings;
    }

    struct Channel {
        address payer;
        uint64 thawEnd; // zero = not thawing
        bool closed; // the payer withdrew the remaining deposit
        bool settledAfterThaw; // the provider made its one settlement after the thaw ended
        address provider;
        uint64 settledSeq; // seq of the last finalized settlement (the next batch's start)
        uint128 deposit;
        uint128 settled; // cumulative of the last finalized settlement
        bytes32 payerKey; // the payer's ed25519 key, which co-signs its receipts
    }

    struct Pending {
        bytes32 receiptsRoot;
        bytes32 payoutsHash;
        uint128 cumulative;
        uint64 seq;
        uint64 deadline; // end of the challenge window; zero = nothing pending
    }

    /// The fraud a dispute proved.
    enum Fraud {
        Seq, // a leaf whose receipt is not the channel's receipt with the seq its position requires
        Value, // a receipt whose value is not its tokens at its prices
        Split, // a payout run whose parts are not its terms version's split of its value
        Attribution, // a receipt inside a payout run that is not of its model, terms version's prices or period
        RunSum, // a payout run whose value is not the sum of its receipts
        Sum, // a Merkle-sum node whose sum is not its children's, or a total that is not the claim
        DataEntry, // a data entry that is not its receipt's weight of its receipt's data share
        DataOrder, // two neighbouring data entries out of (contributor, leaf) order
        DataMissing, // a receipt's weight owed a non-zero amount that has no data entry
        DataNode, // a data tree node whose sum, total or kind is not what it must be
        Weights, // a receipt's weights that are unsorted, zero, of the wrong count or not whole
        Outsider // a weight paying an address that owns no contribution of the model's datanet
    }

    // ------------------------------------------------------------ constants and state

    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(bytes32 channel,uint64 seq,address payer,address provider,bytes32 payerKey,bytes32 providerKey,bytes32 model,bytes32 requestHash,bytes32 responseHash,uint32 inputTokens,uint32 outputTokens,uint128 priceIn,uint128 priceOut,uint128 value,uint128 cumulative,bytes32 attributionRoot,uint64 timestamp)"
    );
    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(bytes32 channel,uint64 seq,uint128 cumulative,bytes32 receiptsRoot)");
    /// secp256k1's n / 2: a higher `s` is the malleable twin of a valid signature (EIP-2).
    uint256 internal constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    uint256 internal constant BPS = 10_000;
    /// Attribution weights are parts per million.
    uint256 internal constant PPM = 1_000_000;
    /// @notice The disputer's part of a slashed bond, in basis points; the rest is burned.
    /// Were it all the disputer's, a provider could dispute its own fraud from another
    /// address and get its bond back: fraud would cost nothing. Half keeps watching paid
    /// while a self-dispute still costs the cheat half its bond.
    uint256 public constant DISPUTE_REWARD_BPS = 5_000;

    Registry public immutable registry;
    /// @notice The data-reward disputes, the only caller of `voidForFraud`.
    DataDisputes public immutable dataDisputes;
    /// @notice Seconds a settlement can be disputed.
    uint64 public immutable challengeWindow;
    /// @notice Seconds between a payer's thaw and the withdrawal of its deposit: at least
    /// two challenge windows (see the constructor).
    uint64 public immutable thawDelay;
    /// @notice The least bond a provider must hold to settle.
    uint128 public immutable minBond;
    uint256 internal immutable cachedChainId;
    bytes32 internal immutable cachedDomainSeparator;

    uint256 internal nonce;
    mapping(bytes32 => Channel) internal channels;
    mapping(bytes32 => Pending) internal pendings;
    /// @notice Amounts credited and not yet withdrawn.
    mapping(address => uint256) public balanceOf;
    /// @notice Until when a node's bond must stay slashable (its last challenge window's end).
    mapping(address => uint64) public bondLockedUntil;
    /// @notice For finalized settlements with data entries, keyed by keccak256(channel, seq):
    /// the hash of their payouts, which claims present again.
    mapping(bytes32 => bytes32) public finalizedPayouts;
    /// @notice Whether a contributor claimed its entries of a run, keyed by
    /// keccak256(settlement key, run, contributor).
    mapping(bytes32 => bool) public dataClaimed;
    /// @notice What has been claimed of a run, keyed by keccak256(settlement key, run): never
    /// more than its `distributed`, whatever its tree says.
    mapping(bytes32 => uint256) public runClaimed;

    // ------------------------------------------------------------ events and errors

    event Opened(bytes32 indexed channel, address indexed payer, address indexed provider, uint256 deposit);
    event ToppedUp(bytes32 indexed channel, uint256 amount, uint256 deposit);
    event Thawing(bytes32 indexed channel, address indexed payer, address indexed provider, uint64 thawEnd);
    event DepositWithdrawn(bytes32 indexed channel, address indexed payer, uint256 amount);
    /// batchStart and settledCumulative are the channel's state before this settlement:
    /// the watcher needs them to know which receipts the batch must hold.
    event Settled(
        bytes32 indexed channel,
        address indexed provider,
        uint64 seq,
        uint128 cumulative,
        uint128 amount,
        bytes32 receiptsRoot,
        uint64 batchStart,
        uint128 settledCumulative,
        uint64 deadline,
        Payout[] payouts
    );
    event Finalized(bytes32 indexed channel, uint64 seq, uint128 cumulative);
    event Disputed(bytes32 indexed channel, address indexed disputer, Fraud fraud, uint256 slashed);
    event Withdrawn(address indexed account, uint256 amount);
    event DataClaimed(
        bytes32 indexed channel, uint64 seq, uint256 run, bytes32 indexed model, address indexed contributor, uint256 amount
    );

    /// No channel has this id.
    error UnknownChannel(bytes32 channel);
    /// The caller is not the channel's payer or provider, as the call requires.
    error Unauthorized();
    /// The provider is not a registered node.
    error NotANode(address provider);
    /// A channel must name the payer's ed25519 key.
    error MissingKey();
    /// A deposit of zero, or an amount that does not fit in uint128.
    error BadAmount(uint256 amount);
    /// The channel's deposit was withdrawn.
    error Closed(bytes32 channel);
    /// thaw on a channel that is already thawing.
    error AlreadyThawing(bytes32 channel, uint64 thawEnd);
    /// withdrawDeposit before the thaw ended (or without a thaw).
    error StillFrozen(bytes32 channel, uint64 thawEnd);
    /// The channel has a settlement in its challenge window.
    error SettlementPending(bytes32 channel, uint64 deadline);
    /// The channel has no settlement in its challenge window.
    error NothingPending(bytes32 channel);
    /// finalize before the challenge window ended.
    error WindowOpen(bytes32 channel, uint64 deadline);
    /// The provider's bond is below minBond.
    error BondTooLow(address provider, uint128 bond, uint128 minBond);
    /// A voucher whose seq is not after the last settled one.
    error StaleVoucher(uint64 seq, uint64 settledSeq);
    /// A voucher whose cumulative does not exceed what is already settled.
    error NothingToSettle(uint128 cumulative, uint128 settled);
    /// A voucher whose cumulative exceeds the deposit.
    error ExceedsDeposit(uint128 cumulative, uint128 deposit);
    /// The payer's signature is malformed, malleable or by someone else.
    error BadSignature();
    /// Payouts whose runs do not cover the batch or whose parts do not sum to the amount.
    error BadPayouts(uint256 leaves, uint256 expectedLeaves, uint256 total, uint256 amount);
    /// A payout for a model that is not registered.
    error UnknownModel(bytes32 model);
    /// A payout naming a terms version the model has not had.
    error UnknownTerms(bytes32 model, uint32 version);
    /// Payouts that are not the ones the settlement committed to.
    error PayoutsMismatch();
    /// A proof that is malformed or does not lead to the settlement's receipts root.
    error BadProof();
    /// A proof whose leaf count or index is not the one this dispute requires.
    error WrongPosition(uint256 index, uint256 count);
    /// The evidence is valid but shows no fraud.
    error NotFraud();
    /// Sending ether failed.
    error TransferFailed();
    /// A payout run whose data fields are inconsistent: more distributed than its data
    /// share, or a root without entries (or the reverse).
    error BadDataRun(uint256 run);
    /// A claim of entries that are not the caller's.
    error NotYourEntries(address contributor);
    /// The contributor already claimed its entries of this run.
    error AlreadyClaimed(address contributor);
    /// Claims on a run would exceed what it distributes.
    error ClaimExceedsRun(uint256 claimed, uint256 distributed);
    /// A thaw delay under two challenge windows (the constructor's comment says why).
    error ThawTooShort(uint64 thawDelay, uint256 minimum);
    /// settle after the provider's one settlement since the channel's thaw ended.
    error ThawEnded(bytes32 channel, uint64 thawEnd);

    /// The thaw must last at least two challenge windows: one for a settlement pending at
    /// the thaw to end, a second as the provider's margin to settle its newest voucher.
    /// Anyone may finalize, so with a shorter thaw a payer finalizes the pending settlement
    /// and withdraws its deposit in one transaction right after that window, before the
    /// provider settles the vouchers it signed since.
    constructor(Registry registry_, uint64 challengeWindow_, uint64 thawDelay_, uint128 minBond_) {
        if (minBond_ == 0) revert BadAmount(0);
        uint256 minThaw = 2 * uint256(challengeWindow_);
        if (thawDelay_ < minThaw) revert ThawTooShort(thawDelay_, minThaw);
        registry = registry_;
        challengeWindow = challengeWindow_;
        thawDelay = thawDelay_;
        minBond = minBond_;
        cachedChainId = block.chainid;
        cachedDomainSeparator = _domainSeparator();
        dataDisputes = new DataDisputes(this);
    }

    /// Accepts only slashed bonds, which Registry sends here: the disputer's part is
    /// credited, the rest burned (see _void).
    receive() external payable {
        if (msg.sender != address(registry)) revert Unauthorized();
    }

    // ------------------------------------------------------------ EIP-712

    function domainSeparator() public view returns (bytes32) {
        // Recomputed after a chain split, so a signature cannot be replayed on the fork.
        return block.chainid == cachedChainId ? cachedDomainSeparator : _domainSeparator();
    }

    function receiptDigest(Receipt calldata r) public view returns (bytes32) {
        return _typedDigest(keccak256(abi.encode(RECEIPT_TYPEHASH, r)));
    }

    function voucherDigest(Voucher calldata v) public view returns (bytes32) {
        return _typedDigest(keccak256(abi.encode(VOUCHER_TYPEHASH, v)));
    }

    // ------------------------------------------------------------ channel lifecycle

    /// @notice Opens a channel from the caller to `provider` with the value sent as deposit.
    /// `payerKey` is the caller's ed25519 key: it binds the channel to the key that will
    /// co-sign its receipts, so that a provider can serve a channel it learns of from the
    /// chain alone.
    function open(address provider, bytes32 payerKey) external payable returns (bytes32 id) {
        if (msg.value == 0) revert BadAmount(0);
        if (payerKey == bytes32(0)) revert MissingKey();
        if (!registry.isNode(provider)) revert NotANode(provider);
        id = keccak256(abi.encode(block.chainid, address(this), msg.sender, provider, ++nonce));
        channels[id] = Channel({
            payer: msg.sender,
            thawEnd: 0,
            closed: false,
            settledAfterThaw: false,
            provider: provider,
            settledSeq: 0,
            deposit: _u128(msg.value),
            settled: 0,
            payerKey: payerKey
        });
        emit Opened(id, msg.sender, provider, msg.value);
    }

    /// @notice Adds the value sent to the channel's deposit (anyone may fund a channel).
    function topUp(bytes32 id) external payable {
        Channel storage ch = _open(id);
        if (msg.value == 0) revert BadAmount(0);
        ch.deposit = _u128(uint256(ch.deposit) + msg.value);
        emit ToppedUp(id, msg.value, ch.deposit);
    }

    /// @notice Starts the thaw: after thawDelay the payer may withdraw what is not settled.
    /// The delay is the provider's (and its watcher's) time to settle its latest voucher;
    /// after it the provider has one settlement left (see settle).
    function thaw(bytes32 id) external {
        Channel storage ch = _open(id);
        if (msg.sender != ch.payer) revert Unauthorized();
        if (ch.thawEnd != 0) revert AlreadyThawing(id, ch.thawEnd);
        uint64 end = uint64(block.timestamp) + thawDelay;
        ch.thawEnd = end;
        emit Thawing(id, ch.payer, ch.provider, end);
    }

    /// @notice Sends the payer what the provider has not settled, after the thaw, and
    /// closes the channel. Waits for a pending settlement to be finalized or voided first;
    /// since the provider settles only once after the thaw, that wait ends.
    function withdrawDeposit(bytes32 id) external {
        Channel storage ch = _open(id);
        if (msg.sender != ch.payer) revert Unauthorized();
        if (ch.thawEnd == 0 || block.timestamp < ch.thawEnd) revert StillFrozen(id, ch.thawEnd);
        uint64 deadline = pendings[id].deadline;
        if (deadline != 0) revert SettlementPending(id, deadline);
        uint256 refund = ch.deposit - ch.settled;
        ch.deposit = ch.settled;
        ch.closed = true;
        emit DepositWithdrawn(id, msg.sender, refund);
        _send(msg.sender, refund);
    }

    // ------------------------------------------------------------ settlement

    /// @notice Claims `voucher.cumulative - settled` from the channel, split as `payouts`,
    /// final after the challenge window. Only the provider settles: its bond answers for
    /// the payouts it declares. Once the payer's thaw has ended, the provider settles once
    /// more at most (its newest voucher); a voided final settlement is not replaced.
    function settle(Voucher calldata voucher, bytes calldata payerSig, Payout[] calldata payouts)
        external
        returns (uint128 amount)
    {
        bytes32 id = voucher.channel;
        Channel storage ch = _open(id);
        if (msg.sender != ch.provider) revert Unauthorized();
        uint64 deadline = pendings[id].deadline;
        if (deadline != 0) revert SettlementPending(id, deadline);
        // Were more allowed after the thaw, finalizing and settling one receipt more in one
        // block, window after window, would keep a settlement pending, and withdrawDeposit
        // waiting for it, for as long as the provider has receipts.
        uint64 thawEnd = ch.thawEnd;
        if (thawEnd != 0 && block.timestamp >= thawEnd) {
            if (ch.settledAfterThaw) revert ThawEnded(id, thawEnd);
            ch.settledAfterThaw = true;
        }
        uint128 bond = registry.bondOf(msg.sender);
        if (bond < minBond) revert BondTooLow(msg.sender, bond, minBond);
        uint64 batchStart = ch.settledSeq;
        uint128 settled = ch.settled;
        if (voucher.seq <= batchStart) revert StaleVoucher(voucher.seq, batchStart);
        if (voucher.cumulative <= settled) revert NothingToSettle(voucher.cumulative, settled);
        if (voucher.cumulative > ch.deposit) revert ExceedsDeposit(voucher.cumulative, ch.deposit);
        if (_recover(voucherDigest(voucher), payerSig) != ch.payer) revert BadSignature();

        amount = voucher.cumulative - settled;
        _checkPayouts(payouts, voucher.seq - batchStart, amount);

        deadline = uint64(block.timestamp) + challengeWindow;
        pendings[id] = Pending({
            receiptsRoot: voucher.receiptsRoot,
            payoutsHash: keccak256(abi.encode(payouts)),
            cumulative: voucher.cumulative,
            seq: voucher.seq,
            deadline: deadline
        });
        if (bondLockedUntil[msg.sender] < deadline) bondLockedUntil[msg.sender] = deadline;
        emit Settled(
            id, msg.sender, voucher.seq, voucher.cumulative, amount, voucher.receiptsRoot, batchStart, settled, deadline, payouts
        );
    }

    /// @notice Makes an undisputed settlement final after its window and credits the
    /// beneficiaries: the provider (node part), each model's owner and data pool, and the
    /// protocol treasury. Anyone may call it.
    function finalize(bytes32 id, Payout[] calldata payouts) external {
        Channel storage ch = channels[id];
        Pending memory p = pendings[id];
        if (p.deadline == 0) revert NothingPending(id);
        if (block.timestamp < p.deadline) revert WindowOpen(id, p.deadline);
        if (keccak256(abi.encode(payouts)) != p.payoutsHash) revert PayoutsMismatch();
        delete pendings[id];
        ch.settled = p.cumulative;
        ch.settledSeq = p.seq;

        uint256 nodeTotal;
        uint256 protocolTotal;
        bool distributes;
        for (uint256 i = 0; i < payouts.length; i++) {
            Payout calldata po = payouts[i];
            (address owner, address dataPool) = registry.beneficiaries(po.model);
            nodeTotal += po.node;
            protocolTotal += po.protocol;
            balanceOf[owner] += po.owner;
            // settle checked distributed <= data. The distributed part stays in the contract
            // until its contributors claim it.
            uint256 pool = po.data - po.distributed;
            // A run made under terms with a data share can finalize after the owner moved to
            // terms without one and cleared the pool: the share then goes to the owner, as
            // a model without a pool's always did, never to address(0) where nobody can
            // withdraw it.
            if (pool != 0) balanceOf[dataPool == address(0) ? owner : dataPool] += pool;
            if (po.distributed != 0) distributes = true;
        }
        balanceOf[ch.provider] += nodeTotal;
        if (protocolTotal != 0) balanceOf[registry.treasury()] += protocolTotal;
        if (distributes) finalizedPayouts[_settlementKey(id, p.seq)] = p.payoutsHash;
        emit Finalized(id, p.seq, p.cumulative);
    }

    /// @notice Credits the caller its data entries of run `k` of the finalized settlement
    /// of `id` at `seq`: the entries from `first` to `last`, which must both be the caller's
    /// (in a sorted tree, everything between them is too). The sum is read from the two
    /// proofs' left sums, so a claim costs two paths whatever the number of entries.
    function claimData(
        bytes32 id,
        uint64 seq,
        Payout[] calldata payouts,
        uint256 k,
        DataEntry calldata first,
        Proof calldata firstProof,
        DataEntry calldata last,
        Proof calldata lastProof
    ) external returns (uint256 amount) {
        bytes32 key = _settlementKey(id, seq);
        bytes32 h = finalizedPayouts[key];
        if (h == bytes32(0) || keccak256(abi.encode(payouts)) != h) revert PayoutsMismatch();
        Payout calldata po = payouts[k];
        // Only the contributor claims: a third party claiming part of its range would
        // strand the rest.
        if (first.contributor != msg.sender || last.contributor != msg.sender) revert NotYourEntries(msg.sender);
        if (firstProof.count != po.dataEntries || lastProof.count != po.dataEntries) {
            revert WrongPosition(firstProof.index, firstProof.count);
        }
        if (firstProof.index > lastProof.index) revert WrongPosition(lastProof.index, lastProof.count);
        (uint256 leftOfFirst,) = _verifyData(po.dataRoot, first, firstProof);
        (uint256 leftOfLast,) = _verifyData(po.dataRoot, last, lastProof);
        amount = leftOfLast + last.amount - leftOfFirst;
        bytes32 claimKey = keccak256(abi.encode(key, k, msg.sender));
        if (dataClaimed[claimKey]) revert AlreadyClaimed(msg.sender);
        dataClaimed[claimKey] = true;
        // A bound that holds even for a tree nobody disputed in time: a run never pays its
        // contributors more than it set aside, so no tree reaches other channels' deposits.
        bytes32 runKey = keccak256(abi.encode(key, k));
        uint256 claimed = runClaimed[runKey] + amount;
        if (claimed > po.distributed) revert ClaimExceedsRun(claimed, po.distributed);
        runClaimed[runKey] = claimed;
        balanceOf[msg.sender] += amount;
        emit DataClaimed(id, seq, k, po.model, msg.sender, amount);
    }

    /// @notice Sends the caller everything credited to it.
    function withdraw() external {
        uint256 amount = balanceOf[msg.sender];
        balanceOf[msg.sender] = 0;
        emit Withdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ------------------------------------------------------------ fraud proofs
    //
    // Each dispute reverts with NotFraud when its evidence is valid but honest, and with
    // BadProof or WrongPosition when the evidence does not bind to the settlement. Proofs
    // whose position matters are checked against the leaf count the contract itself knows
    // (voucher seq - batch start): with a count chosen by the disputer, a promoted node
    // makes different positions hash alike (leaf 2 of 3 is leaf 1 of 2), which would let a
    // disputer slash an honest batch.

    /// @notice A leaf that is not the receipt its position requires: a seq other than
    /// batchStart + 1 + index (stale, replayed, skipped), or a receipt of another channel.
    /// Leaf 0 may be proven under any leaf count, since only index 0 has a path of right
    /// siblings only; its depth then also proves a batch with the wrong number of leaves.
    function disputeSeq(bytes32 id, Receipt calldata r, uint128 leafValue, Proof calldata proof) external {
        (Pending storage p, Channel storage ch) = _pending(id);
        uint256 n = p.seq - ch.settledSeq;
        if (proof.index != 0 && proof.count != n) revert WrongPosition(proof.index, proof.count);
        _verifyLeaf(p, receiptDigest(r), leafValue, proof);
        bool fraud = r.channel != id || r.payer != ch.payer || r.provider != ch.provider
            || uint256(r.seq) != uint256(ch.settledSeq) + 1 + proof.index
            || (proof.index == 0 && proof.siblings.length != _depth(n));
        _conclude(id, ch, fraud, Fraud.Seq);
    }

    /// @notice A leaf whose value is not its receipt's, or a receipt whose value is not
    /// floor((inputTokens x priceIn + outputTokens x priceOut) / 1000) at its own prices.
    /// (Whether those prices are the model's is its run's business: disputeAttribution.)
    function disputeValue(bytes32 id, Receipt calldata r, uint128 leafValue, Proof calldata proof) external {
        (Pending storage p, Channel storage ch) = _pending(id);
        _verifyLeaf(p, receiptDigest(r), leafValue, proof);
        uint256 expected = (uint256(r.inputTokens) * r.priceIn + uint256(r.outputTokens) * r.priceOut) / 1000;
        bool fraud = leafValue != r.value || expected != r.value;
        _conclude(id, ch, fraud, Fraud.Value);
    }

    /// @notice Payout run `k` whose parts are not the split of the terms version it names
    /// of the run's value. Later versions do not matter: the run's receipts were made under
    /// this one.
    function disputeSplit(bytes32 id, Payout[] calldata payouts, uint256 k) external {
        (Pending storage p, Channel storage ch) = _pending(id);
        if (keccak256(abi.encode(payouts)) != p.payoutsHash) revert PayoutsMismatch();
        Payout calldata po = payouts[k];
        uint256 value = uint256(po.node) + po.owner + po.data + po.protocol;
        (Terms memory t,,) = registry.termsVersion(po.model, po.termsVersion);
        _conclude(id, ch, !_isSplit(po, value, t), Fraud.Split);
    }

    /// @notice A receipt inside payout run `k` that does not belong there: of another
    /// model, at prices other than the run's terms version's, or made at a time that
    /// version does not cover (before it came into force, or TERMS_GRACE after the next).
    function disputeAttribution(
        bytes32 id,
        Payout[] calldata payouts,
        uint256 k,
        Receipt calldata r,
        uint128 leafValue,
        Proof calldata proof
    ) external {
        (Pending storage p, Channel storage ch) = _pending(id);
        (uint256 start, uint256 end) = _run(p, payouts, k);
        uint256 n = p.seq - ch.settledSeq;
        if (proof.count != n || proof.index < start || proof.index >= end) {
            revert WrongPosition(proof.index, proof.count);
        }
        _verifyLeaf(p, receiptDigest(r), leafValue, proof);
        Payout calldata po = payouts[k];
        (Terms memory t, uint64 since, uint64 until) = registry.termsVersion(po.model, po.termsVersion);
        bool fraud = r.model != po.model || r.priceIn != t.priceIn || r.priceOut != t.priceOut
            || r.timestamp < since || r.timestamp >= until;
        _conclude(id, ch, fraud, Fraud.Attribution);
    }

    /// @notice Payout run `k` whose value is not the sum of its leaves, shown by the proofs
    /// of its first and last leaves: each proof gives the sum of the leaves to its left.
    function disputeRunSum(
        bytes32 id,
        Payout[] calldata payouts,
        uint256 k,
        SumNode calldata first,
        Proof calldata firstProof,
        SumNode calldata last,
        Proof calldata lastProof
    ) external {
        (Pending storage p, Channel storage ch) = _pending(id);
        (uint256 start, uint256 end) = _run(p, payouts, k);
        uint256 n = p.seq - ch.settledSeq;
        if (firstProof.count != n || firstProof.index != start) revert WrongPosition(firstProof.index, firstProof.count);
        if (lastProof.count != n || lastProof.index != end - 1) revert WrongPosition(lastProof.index, lastProof.count);
        // SumNode.hash carries the receipt digest here: the leaf hash is computed, so a
        // value cannot be claimed for a leaf without the leaf's own preimage.
        (uint256 leftOfFirst, bool o1) = _verifyLeaf(p, first.hash, first.sum, firstProof);
        (uint256 leftOfLast, bool o2) = _verifyLeaf(p, last.hash, last.sum, lastProof);
        Payout calldata po = payouts[k];
        uint256 claimed = uint256(po.node) + po.owner + po.data + po.protocol;
        // Compared without subtraction: a corrupt tree must not make the dispute revert.
        bool fraud = o1 || o2 || leftOfLast + last.sum != leftOfFirst + claimed;
        _conclude(id, ch, fraud, Fraud.RunSum);
    }

    /// @notice A Merkle-sum node whose recorded sum (the one its parent hashes) is not the
    /// sum of its children, a sum that overflows uint128, or a tree whose total is not the
    /// settled amount. The node is given by its children (`a`, `b`), or, with `isLeaf`, as a
    /// leaf (`a.hash` = receipt digest, `a.sum` = value). `recordedSum` is the node's sum as
    /// its parent records it (ignored for the root).
    function disputeSum(
        bytes32 id,
        bool isLeaf,
        SumNode calldata a,
        SumNode calldata b,
        uint128 recordedSum,
        Proof calldata proof
    ) external {
        (Pending storage p, Channel storage ch) = _pending(id);
        bytes32 h;
        uint256 actual;
        if (isLeaf) {
            h = SumMerkle.leafHash(a.hash, a.sum);
            actual = a.sum;
        } else {
            h = SumMerkle.nodeHash(a.hash, a.sum, b.hash, b.sum);
            actual = uint256(a.sum) + b.sum;
        }
        // The root's sum is not recorded by a parent: it is its children's sum.
        uint256 recorded = proof.count == 1 ? actual : recordedSum;
        (bytes32 root, uint256 total,, bool overflow) = SumMerkle.walk(h, recorded, proof.index, proof.count, proof.siblings);
        if (root != p.receiptsRoot) revert BadProof();
        uint256 amount = p.cumulative - ch.settled;
        bool fraud = overflow || actual > type(uint128).max || actual != recorded || total != amount;
        _conclude(id, ch, fraud, Fraud.Sum);
    }

    /// @notice Voids the pending settlement of `id` and slashes the provider's bond (half
    /// to `disputer`), for a data fraud that DataDisputes has proven.
    function voidForFraud(bytes32 id, address disputer, Fraud kind) external {
        if (msg.sender != address(dataDisputes)) revert Unauthorized();
        (, Channel storage ch) = _pending(id);
        _void(id, ch, disputer, kind);
    }

    // ------------------------------------------------------------ views

    function channel(bytes32 id) external view returns (Channel memory) {
        return channels[id];
    }

    function pending(bytes32 id) external view returns (Pending memory) {
        return pendings[id];
    }

    /// @notice Whether `contributor` claimed its entries of run `k` of the settlement of
    /// `id` at `seq`.
    function claimedData(bytes32 id, uint64 seq, uint256 k, address contributor) external view returns (bool) {
        return dataClaimed[keccak256(abi.encode(_settlementKey(id, seq), k, contributor))];
    }

    // ------------------------------------------------------------ internals

    function _domainSeparator() internal view returns (bytes32) {
        return keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("attrinet"), keccak256("1"), block.chainid, address(this))
        );
    }

    function _typedDigest(bytes32 structHash) internal view returns (bytes32) {
        return keccak256(abi.encodePacked(hex"1901", domainSeparator(), structHash));
    }

    /// Recovers a 65-byte r || s || v signature, accepting only v in {27, 28} and low s, so
    /// that a signature has exactly one accepted encoding.
    function _recover(bytes32 digest, bytes calldata sig) internal pure returns (address signer) {
        if (sig.length != 65) revert BadSignature();
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (uint256(s) > HALF_N || (v != 27 && v != 28)) revert BadSignature();
        signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert BadSignature();
    }

    function _checkPayouts(Payout[] calldata payouts, uint256 expectedLeaves, uint256 amount) internal view {
        uint256 leaves;
        uint256 total;
        for (uint256 i = 0; i < payouts.length; i++) {
            Payout calldata po = payouts[i];
            if (po.leaves == 0) revert BadPayouts(0, expectedLeaves, total, amount);
            leaves += po.leaves;
            total += uint256(po.node) + po.owner + po.data + po.protocol;
            uint256 versions = registry.termsCount(po.model);
            if (versions == 0) revert UnknownModel(po.model);
            if (po.termsVersion >= versions) revert UnknownTerms(po.model, po.termsVersion);
            if (po.distributed > po.data || (po.dataEntries == 0) != (po.dataRoot == bytes32(0))) revert BadDataRun(i);
            if (po.dataEntries == 0 && po.distributed != 0) revert BadDataRun(i);
        }
        if (leaves != expectedLeaves || total != amount) revert BadPayouts(leaves, expectedLeaves, total, amount);
    }

    function _open(bytes32 id) internal view returns (Channel storage ch) {
        ch = channels[id];
        if (ch.payer == address(0)) revert UnknownChannel(id);
        if (ch.closed) revert Closed(id);
    }

    function _pending(bytes32 id) internal view returns (Pending storage p, Channel storage ch) {
        p = pendings[id];
        ch = channels[id];
        // A dispute after the window would race finalize; the window is the deal.
        if (p.deadline == 0 || block.timestamp >= p.deadline) revert NothingPending(id);
    }

    /// The leaf range [start, end) of payout run k.
    function _run(Pending storage p, Payout[] calldata payouts, uint256 k)
        internal
        view
        returns (uint256 start, uint256 end)
    {
        if (keccak256(abi.encode(payouts)) != p.payoutsHash) revert PayoutsMismatch();
        for (uint256 i = 0; i < k; i++) {
            start += payouts[i].leaves;
        }
        end = start + payouts[k].leaves;
    }

    /// Checks that leaf (digest, value) is in the settlement's tree at the proof's position;
    /// returns the sum of the leaves to its left and whether a sum on the way overflowed.
    function _verifyLeaf(Pending storage p, bytes32 digest, uint128 value, Proof calldata proof)
        internal
        view
        returns (uint256 left, bool overflow)
    {
        bytes32 root;
        (root,, left, overflow) = SumMerkle.walk(SumMerkle.leafHash(digest, value), value, proof.index, proof.count, proof.siblings);
        if (root != p.receiptsRoot) revert BadProof();
    }

    /// Number of levels above the leaves of a tree of n leaves (the length of leaf 0's proof).
    function _depth(uint256 n) internal pure returns (uint256 d) {
        while (n > 1) {
            n = (n + 1) >> 1;
            d++;
        }
    }

    function _settlementKey(bytes32 id, uint64 seq) internal pure returns (bytes32) {
        return keccak256(abi.encode(id, seq));
    }

    /// Checks that data entry `e` is in the data tree `root` at the proof's position;
    /// returns the sum of the entries to its left.
    function _verifyData(bytes32 root, DataEntry calldata e, Proof calldata proof)
        internal
        pure
        returns (uint256 left, bool overflow)
    {
        bytes32 digest = keccak256(abi.encodePacked(e.contributor, e.leaf, e.weightIndex));
        bytes32 computed;
        (computed,, left, overflow) = SumMerkle.walk(SumMerkle.leafHash(digest, e.amount), e.amount, proof.index, proof.count, proof.siblings);
        if (computed != root) revert BadProof();
    }

    /// floor(V x b / 10000) as (V / 10000) x b + (V mod 10000) x b / 10000: exact, no overflow.
    function _share(uint256 value, uint256 bps) internal pure returns (uint256) {
        return (value / BPS) * bps + ((value % BPS) * bps) / BPS;
    }

    function _isSplit(Payout calldata po, uint256 value, Terms memory t) internal pure returns (bool) {
        uint256 owner = _share(value, t.ownerBps);
        uint256 data = _share(value, t.dataBps);
        uint256 protocol = _share(value, t.protocolBps);
        return po.owner == owner && po.data == data && po.protocol == protocol
            && po.node == value - owner - data - protocol;
    }

    function _conclude(bytes32 id, Channel storage ch, bool fraud, Fraud kind) internal {
        if (!fraud) revert NotFraud();
        _void(id, ch, msg.sender, kind);
    }

    function _void(bytes32 id, Channel storage ch, address disputer, Fraud kind) internal {
        // Voiding leaves the channel exactly as before the settlement (settled and
        // settledSeq are only written at finalize), so the provider, once re-bonded, can
        // settle the correct batch.
        delete pendings[id];
        uint256 slashed = registry.slash(ch.provider);
        // Half to the disputer, half burned (DISPUTE_REWARD_BPS): a provider disputing its
        // own fraud from another address must still lose. The burned part is sent to
        // address(0), not kept: this contract then holds exactly what it owes (unsettled
        // deposits, credits, unclaimed data entries), and nothing can ever spend it.
        uint256 reward = _share(slashed, DISPUTE_REWARD_BPS);
        balanceOf[disputer] += reward;
        emit Disputed(id, disputer, kind, slashed);
        _send(address(0), slashed - reward);
    }

    function _u128(uint256 x) internal pure returns (uint128) {
        if (x > type(uint128).max) revert BadAmount(x);
        return uint128(x);
    }

    function _send(address to, uint256 amount) internal {
        if (amount == 0) return;
        (bool ok,) = payable(to).call{value: amount}("");
        if (!ok) revert TransferFailed();
    }
}
