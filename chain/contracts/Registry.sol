// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.24;

/// @notice The terms under which a model is offered: prices in wei per 1,000 tokens and the
/// split of every value in basis points (node / model owner / data / protocol, summing to
/// exactly 10,000). See docs/protocol.md, "Prices and value" and "Payout split".
struct Terms {
    uint128 priceIn;
    uint128 priceOut;
    uint16 nodeBps;
    uint16 ownerBps;
    uint16 dataBps;
    uint16 protocolBps;
}

/// @notice The part of Channels the registry needs: how long a node's bond must stay
/// slashable because a settlement of it may still be disputed.
interface IBondLock {
    function bondLockedUntil(address node) external view returns (uint64);
}

/// @title attrinet registry: nodes (EVM address <-> ed25519 key, bond) and models.
/// @notice A node's bond is what a disputer wins when the node settles a fraudulent batch,
/// so it can only leave after an unbonding delay and after every settlement of the node is
/// past its challenge window. Models are updated by their owners only.
contract Registry {
    struct Node {
        bytes32 key; // ed25519 public key (RFC 8032 encoding); zero = not registered
        uint128 bond;
        uint64 unbondingAt; // when the bond may be withdrawn; zero = not unbonding
    }

    struct Model {
        address owner; // zero = not registered
        address dataPool; // receives the data share; required when dataBps > 0
        // When the datanet was last set: a receipt made before it was attributed against
        // the previous datanet, so disputes judge only later receipts by this one.
        uint64 datanetSince;
        bytes32 datanetRoot; // commitment to the model's datanet, zero when none
        Terms terms; // the terms in force: the last entry of the model's terms history
        uint32 version; // the index of `terms` in that history
    }

    /// @notice One entry of a model's terms history: terms and when they came into force.
    /// Every version a model ever had is kept, because a settlement names the version its
    /// receipts were made under and is judged by that version alone: an owner's update,
    /// however many, must never turn an honest node's pending settlement into "fraud".
    struct TermsVersion {
        Terms terms;
        uint64 since;
    }

    uint16 internal constant BPS = 10_000;
    /// @notice How long after an update receipts may still be made under the terms it
    /// replaced: a node learns of the update on its next pass over the chain and stops
    /// serving the model, and what it served until then is honest.
    uint64 public constant TERMS_GRACE = 1 hours;

    /// @notice Receives the protocol share of every settlement.
    address public immutable treasury;
    /// @notice Seconds between `requestUnbond` and `withdrawBond`.
    uint64 public immutable unbondDelay;
    address internal immutable deployer;
    /// @notice The Channels contract: the only caller allowed to slash.
    address public channels;

    mapping(address => Node) internal nodes;
    /// @notice The EVM address an ed25519 key is bound to.
    mapping(bytes32 => address) public nodeByKey;
    mapping(bytes32 => Model) internal models;
    /// Every version of every model's terms, oldest first (see TermsVersion).
    mapping(bytes32 => TermsVersion[]) internal termsHistory;

    event NodeRegistered(address indexed node, bytes32 indexed key, uint256 bond);
    event BondAdded(address indexed node, uint256 amount, uint256 bond);
    event UnbondRequested(address indexed node, uint64 withdrawableAt);
    event BondWithdrawn(address indexed node, uint256 amount);
    event Slashed(address indexed node, uint256 amount);
    event ModelRegistered(bytes32 indexed model, address indexed owner, Terms terms, bytes32 datanetRoot, address dataPool);
    event TermsUpdated(bytes32 indexed model, uint32 version, Terms terms);
    event DatanetUpdated(bytes32 indexed model, bytes32 datanetRoot, address dataPool);
    event ModelTransferred(bytes32 indexed model, address indexed from, address indexed to);

    /// The caller may not do this (wrong deployer, model owner or slasher).
    error Unauthorized();
    /// setChannels was already called.
    error ChannelsAlreadySet();
    /// The ed25519 key is zero.
    error ZeroKey();
    /// The caller already registered a node.
    error NodeExists(address node);
    /// The ed25519 key is already bound to another address.
    error KeyTaken(bytes32 key, address node);
    /// The address has no registered node.
    error UnknownNode(address node);
    /// A bond or an amount does not fit in uint128.
    error AmountTooLarge(uint256 amount);
    /// withdrawBond before requestUnbond's delay, or while a settlement can still be disputed.
    error BondLocked(uint64 until);
    /// A model id of zero, or one that is already registered.
    error ModelExists(bytes32 model);
    /// The model id is not registered.
    error UnknownModel(bytes32 model);
    /// The model has no terms of this version.
    error UnknownTerms(bytes32 model, uint32 version);
    /// The split does not sum to 10,000 basis points.
    error BadSplit(uint256 sum);
    /// A data share without a data pool to receive it.
    error NoDataPool();
    /// A zero address where one is required.
    error ZeroAddress();
    /// Sending ether failed.
    error TransferFailed();

    constructor(address treasury_, uint64 unbondDelay_) {
        if (treasury_ == address(0)) revert ZeroAddress();
        treasury = treasury_;
        unbondDelay = unbondDelay_;
        deployer = msg.sender;
    }

    /// @notice Binds the Channels contract, once. Registry and Channels point at each other,
    /// so one of them must learn the other's address after both are deployed.
    function setChannels(address channels_) external {
        if (msg.sender != deployer) revert Unauthorized();
        if (channels != address(0)) revert ChannelsAlreadySet();
        if (channels_ == address(0)) revert ZeroAddress();
        channels = channels_;
    }

    // ---------------------------------------------------------------- nodes

    /// @notice Registers the caller as a node with its ed25519 key; the value sent is its bond.
    function registerNode(bytes32 key) external payable {
        if (key == bytes32(0)) revert ZeroKey();
        if (nodes[msg.sender].key != bytes32(0)) revert NodeExists(msg.sender);
        address holder = nodeByKey[key];
        if (holder != address(0)) revert KeyTaken(key, holder);
        nodes[msg.sender] = Node({key: key, bond: _u128(msg.value), unbondingAt: 0});
        nodeByKey[key] = msg.sender;
        emit NodeRegistered(msg.sender, key, msg.value);
    }

    /// @notice Adds the value sent to the caller's bond.
    function addBond() external payable {
        Node storage n = _node(msg.sender);
        n.bond = _u128(uint256(n.bond) + msg.value);
        emit BondAdded(msg.sender, msg.value, n.bond);
    }

    /// @notice Starts the unbonding delay; the bond stays slashable until it is withdrawn.
    function requestUnbond() external {
        Node storage n = _node(msg.sender);
        uint64 until = uint64(block.timestamp) + unbondDelay;
        n.unbondingAt = until;
        emit UnbondRequested(msg.sender, until);
    }

    /// @notice Withdraws the whole bond after the unbonding delay, once no settlement of the
    /// node can still be disputed.
    function withdrawBond() external {
        Node storage n = _node(msg.sender);
        uint64 until = n.unbondingAt;
        if (until == 0 || block.timestamp < until) revert BondLocked(until);
        uint64 locked = IBondLock(channels).bondLockedUntil(msg.sender);
        if (block.timestamp < locked) revert BondLocked(locked);
        uint256 amount = n.bond;
        n.bond = 0;
        n.unbondingAt = 0;
        emit BondWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    /// @notice Takes a node's whole bond and sends it to Channels, which credits half to the
    /// disputer and burns the rest. Only Channels may call it, after a proven fraud.
    function slash(address who) external returns (uint256 amount) {
        if (msg.sender != channels) revert Unauthorized();
        Node storage n = nodes[who];
        amount = n.bond;
        n.bond = 0;
        n.unbondingAt = 0;
        emit Slashed(who, amount);
        _send(msg.sender, amount);
    }

    function node(address who) external view returns (Node memory) {
        return nodes[who];
    }

    function bondOf(address who) external view returns (uint128) {
        return nodes[who].bond;
    }

    function isNode(address who) external view returns (bool) {
        return nodes[who].key != bytes32(0);
    }

    // ---------------------------------------------------------------- models

    /// @notice Registers a model; the caller becomes its owner.
    function registerModel(bytes32 id, Terms calldata initial, bytes32 datanetRoot, address dataPool) external {
        if (id == bytes32(0) || models[id].owner != address(0)) revert ModelExists(id);
        _checkTerms(initial, dataPool);
        Model storage m = models[id];
        m.owner = msg.sender;
        m.dataPool = dataPool;
        m.datanetRoot = datanetRoot;
        m.datanetSince = uint64(block.timestamp);
        m.terms = initial;
        termsHistory[id].push(TermsVersion({terms: initial, since: uint64(block.timestamp)}));
        emit ModelRegistered(id, msg.sender, initial, datanetRoot, dataPool);
    }

    /// @notice Puts new prices and a new split in force as the model's next terms version.
    /// Settlements name the version their receipts were made under, and receipts may be made
    /// under the version this one replaces for TERMS_GRACE more (see termsVersion).
    function updateTerms(bytes32 id, Terms calldata updated) external {
        Model storage m = _ownedModel(id);
        _checkTerms(updated, m.dataPool);
        termsHistory[id].push(TermsVersion({terms: updated, since: uint64(block.timestamp)}));
        m.terms = updated;
        m.version = uint32(termsHistory[id].length - 1);
        emit TermsUpdated(id, m.version, updated);
    }

    function setDatanet(bytes32 id, bytes32 datanetRoot, address dataPool) external {
        Model storage m = _ownedModel(id);
        _checkTerms(m.terms, dataPool);
        // Only a new datanet restarts the clock: moving the pool changes no weight.
        if (datanetRoot != m.datanetRoot) m.datanetSince = uint64(block.timestamp);
        m.datanetRoot = datanetRoot;
        m.dataPool = dataPool;
        emit DatanetUpdated(id, datanetRoot, dataPool);
    }

    function transferModel(bytes32 id, address newOwner) external {
        Model storage m = _ownedModel(id);
        if (newOwner == address(0)) revert ZeroAddress();
        emit ModelTransferred(id, m.owner, newOwner);
        m.owner = newOwner;
    }

    function model(bytes32 id) external view returns (Model memory) {
        return models[id];
    }

    /// @notice Who receives a settlement's owner and data shares of this model.
    function beneficiaries(bytes32 id) external view returns (address owner, address dataPool) {
        Model storage m = models[id];
        return (m.owner, m.dataPool);
    }

    /// @notice The terms in force and their version.
    function terms(bytes32 id) external view returns (bool exists, Terms memory current, uint32 version) {
        Model storage m = models[id];
        return (m.owner != address(0), m.terms, m.version);
    }

    /// @notice How many terms versions the model has had (zero: not registered).
    function termsCount(bytes32 id) external view returns (uint256) {
        return termsHistory[id].length;
    }

    /// @notice Version `version` of the model's terms, and the receipt timestamps it covers:
    /// from `since`, when it came into force, to `until` (exclusive), TERMS_GRACE after the
    /// next version came into force (the maximum for the version in force).
    function termsVersion(bytes32 id, uint32 version)
        external
        view
        returns (Terms memory t, uint64 since, uint64 until)
    {
        TermsVersion[] storage h = termsHistory[id];
        if (version >= h.length) revert UnknownTerms(id, version);
        t = h[version].terms;
        since = h[version].since;
        until = version + 1 < h.length ? h[version + 1].since + TERMS_GRACE : type(uint64).max;
    }

    // ---------------------------------------------------------------- internals

    function _node(address who) internal view returns (Node storage n) {
        n = nodes[who];
        if (n.key == bytes32(0)) revert UnknownNode(who);
    }

    function _ownedModel(bytes32 id) internal view returns (Model storage m) {
        m = models[id];
        if (m.owner == address(0)) revert UnknownModel(id);
        if (m.owner != msg.sender) revert Unauthorized();
    }

    function _checkTerms(Terms memory t, address dataPool) internal pure {
        uint256 sum = uint256(t.nodeBps) + t.ownerBps + t.dataBps + t.protocolBps;
        if (sum != BPS) revert BadSplit(sum);
        if (t.dataBps != 0 && dataPool == address(0)) revert NoDataPool();
    }

    function _u128(uint256 x) internal pure returns (uint128) {
        if (x > type(uint128).max) revert AmountTooLarge(x);
        return uint128(x);
    }

    function _send(address to, uint256 amount) internal {
        if (amount == 0) return;
        (bool ok,) = payable(to).call{value: amount}("");
        if (!ok) revert TransferFailed();
    }
}
