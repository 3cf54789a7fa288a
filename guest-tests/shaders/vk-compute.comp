#version 450
// vk-compute: out[i] = mix(in[i] * a + (b ^ i)), all in 32-bit unsigned
// integers (wrapping), so the CPU can recompute every element exactly. The
// mix is the same function as mix() in vk-compute.c.
layout(local_size_x = 256) in;

layout(std430, set = 0, binding = 0) readonly buffer Input { uint v[]; } src;
layout(std430, set = 0, binding = 1) writeonly buffer Output { uint v[]; } dst;
layout(push_constant) uniform Params { uint a; uint b; uint count; } p;

void main()
{
    uint i = gl_GlobalInvocationID.x;
    if (i >= p.count)
        return;
    uint x = src.v[i] * p.a + (p.b ^ i);
    x ^= x >> 15;
    x *= 0x2c1b3c6du;
    x ^= x >> 12;
    x *= 0x297a2d39u;
    x ^= x >> 15;
    dst.v[i] = x;
}
