#version 450
// vk-render: every shape is one solid colour, given per draw.
layout(push_constant) uniform Params { vec4 colour; vec2 size; } p;
layout(location = 0) out vec4 colour;

void main()
{
    colour = p.colour;
}
